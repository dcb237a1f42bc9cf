"""Prefix outputs kept between passes over one layer, so the layer pays its prefix once.

A layer-wide check first orders the layer's units (one pass, :mod:`.unit_order`) and then
evaluates them in chunks of 1, 4, 16, ... units (one scan each). Every one of those passes
starts by running the network up to the layer on every batch, and gets the same values
each time. A :class:`PrefixCache` keeps them while they fit in a byte budget: per batch
the prefix graph's outputs (the layer's output and the values that skip over it) and,
once a scan computed them, the unablated logits. Later passes then run only the network
after the layer.

An entry is used only for the same model object, layer, device and batch size, with
every parameter and buffer unchanged (torch's in-place version counters), and for the
same pass over the data: the data is still iterated, for the labels and the pass's
fingerprint, and a pass whose fingerprint differs from the stored one is computed again
without the cache.

Example::

    cache = PrefixCache(budget=512 * 2**20)
    damage = estimated_damage(model, loader, "layer3", prefix_cache=cache)  # fills it
    result = scan(model, loader, "layer3", units=[7], prefix_cache=cache)   # suffix only
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pytest_unitablate.core.memory import DEFAULT_MEMORY_BUDGET
from pytest_unitablate.core.scan_fx import Split, split_at


def _nbytes(values: Any) -> int:
    if isinstance(values, torch.Tensor):
        return values.nbytes
    if isinstance(values, (tuple, list)):
        return sum(_nbytes(v) for v in values)
    return 0


def _versions(model: nn.Module) -> tuple[int, ...] | None:
    """In-place version counters of every parameter and buffer (any write bumps one);
    ``None`` when some tensor keeps none (made under ``inference_mode``): never reused."""
    try:
        return tuple(t._version for t in (*model.parameters(), *model.buffers()))
    except RuntimeError:
        return None


@dataclass
class PrefixEntry:
    """One layer's prefix outputs over a whole pass; ``logits[i]`` is ``None`` until a scan
    computes batch ``i``'s unablated logits."""

    model: nn.Module  # held, so that the id in the key cannot be reused
    data: Any
    versions: tuple[int, ...] | None
    fingerprint: str
    batches: list[tuple[Any, ...]]
    logits: list[torch.Tensor | None]
    nbytes: int
    #: the first batch's prefix time, and prefix plus unablated suffix once known (the
    #: cost of a plain forward, which a scan weighs against its suffix passes)
    prefix_seconds: float
    whole_seconds: float | None = None

    def add_logits(self, index: int, logits: torch.Tensor) -> None:
        if self.logits[index] is None:
            self.logits[index] = logits.detach()
            self.nbytes += logits.nbytes


@dataclass
class Recorder:
    """Collects a pass's prefix outputs batch by batch; gives up past the budget."""

    budget: int
    batches: list[tuple[Any, ...]] = field(default_factory=list)
    logits: list[torch.Tensor | None] = field(default_factory=list)
    nbytes: int = 0
    full: bool = False  # over budget: nothing more is kept, nothing will be stored
    prefix_seconds: float = 0.0  # the first batch's, as for PrefixEntry
    whole_seconds: float | None = None

    def add(self, produced: tuple[Any, ...], logits: torch.Tensor | None = None) -> None:
        if self.full:
            return
        self.nbytes += _nbytes(produced) + (logits.nbytes if logits is not None else 0)
        if self.nbytes > self.budget:
            self.full, self.batches, self.logits = True, [], []
            return
        self.batches.append(tuple(produced))
        self.logits.append(logits.detach() if logits is not None else None)


class PrefixCache:
    """Prefix outputs of recently passed layers, at most ``budget`` bytes in all (the
    least recently used entries go first), and the traced splits of those layers."""

    def __init__(self, budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.budget = budget
        self._entries: OrderedDict[tuple[Any, ...], PrefixEntry] = OrderedDict()
        self._splits: dict[tuple[int, str], tuple[nn.Module, Split | None, str]] = {}
        self.stats = {"reused": 0, "stored": 0}

    def split(self, model: nn.Module, layer: str) -> tuple[Split | None, str]:
        """:func:`~pytest_unitablate.core.scan_fx.split_at`, traced once per model and layer."""
        key = (id(model), layer)
        if key not in self._splits or self._splits[key][0] is not model:
            self._splits[key] = (model, *split_at(model, layer))
        _, split, why = self._splits[key]
        return split, why

    @staticmethod
    def _key(model: nn.Module, data: Any, layer: str, device: torch.device,
             batch_size: int) -> tuple[Any, ...]:
        return (id(model), id(data), layer, str(device), batch_size)

    def get(self, model: nn.Module, data: Any, layer: str, device: torch.device,
            batch_size: int) -> PrefixEntry | None:
        """The entry for this pass, if one is stored and the weights did not change."""
        key = self._key(model, data, layer, device, batch_size)
        entry = self._entries.get(key)
        if entry is None or entry.model is not model or entry.data is not data:
            return None
        if entry.versions is None or entry.versions != _versions(model):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        self.stats["reused"] += 1
        return entry

    def recorder(self) -> Recorder:
        return Recorder(self.budget)

    def put(self, model: nn.Module, data: Any, layer: str, device: torch.device,
            batch_size: int, recorded: Recorder, fingerprint: str) -> None:
        """Store a finished pass (nothing when it went over the budget)."""
        if recorded.full or not recorded.batches:
            return
        key = self._key(model, data, layer, device, batch_size)
        self._entries.pop(key, None)
        while self._entries and self.held() + recorded.nbytes > self.budget:
            self._entries.popitem(last=False)
        self._entries[key] = PrefixEntry(model, data, _versions(model), fingerprint,
                                         recorded.batches, recorded.logits, recorded.nbytes,
                                         recorded.prefix_seconds, recorded.whole_seconds)
        self.stats["stored"] += 1

    def drop(self, model: nn.Module, data: Any, layer: str, device: torch.device,
             batch_size: int) -> None:
        self._entries.pop(self._key(model, data, layer, device, batch_size), None)

    def held(self) -> int:
        """Bytes of tensors held now."""
        return sum(e.nbytes for e in self._entries.values())


__all__ = ["PrefixCache", "PrefixEntry", "Recorder"]
