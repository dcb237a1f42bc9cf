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
fingerprint, and a pass whose batches or fingerprint differ from the stored one raises
:class:`StalePrefix` from the entry; the caller drops it and makes the pass without it.

:func:`evaluate_keeping` fills the cache from the baseline pass itself: forward hooks
copy the layer's output and the values that skip over it (when each is the model's input
or a module's output) and the logits, so no pass after the baseline runs the prefix.

Example::

    cache = PrefixCache(budget=512 * 2**20)
    base = evaluate_keeping(model, loader, ["layer3"], cache)               # fills it
    damage = estimated_damage(model, loader, "layer3", prefix_cache=cache)  # suffix only
    result = scan(model, loader, "layer3", units=[7], prefix_cache=cache)   # suffix only
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pytest_unitablate.core.data import first_inputs
from pytest_unitablate.core.evaluation import EvalResult, evaluate, model_device, select_logits
from pytest_unitablate.core.scan.memory import DEFAULT_MEMORY_BUDGET
from pytest_unitablate.core.scan.split import Split, split_at
from pytest_unitablate.core.tokens import TokenBatch


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


class StalePrefix(Exception):
    """A kept pass no longer matches the data being passed (another batch size, number of
    batches or fingerprint): drop the entry and make the pass without it."""


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

    def batch(self, index: int, examples: int) -> tuple[Any, ...] | None:
        """Batch ``index``'s prefix outputs, ``None`` past the kept batches; raises
        :class:`StalePrefix` if they were kept for another number of examples."""
        if index >= len(self.batches):
            return None
        if self.batches[index][0].shape[0] != examples:
            raise StalePrefix
        return self.batches[index]

    def check_pass(self, fingerprint: str, batches: int) -> None:
        """Raise :class:`StalePrefix` unless the pass just made (its fingerprint and number
        of batches) is the one kept."""
        if fingerprint != self.fingerprint or batches != len(self.batches):
            raise StalePrefix

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
            self.give_up()
            return
        self.batches.append(tuple(produced))
        self.logits.append(logits.detach() if logits is not None else None)

    def give_up(self) -> None:
        """Keep nothing of this pass (and free what was kept)."""
        self.full, self.batches, self.logits, self.nbytes = True, [], [], 0


class PrefixCache:
    """Prefix outputs of recently passed layers, at most ``budget`` bytes in all (the
    least recently used entries go first), and the traced splits of those layers."""

    def __init__(self, budget: int = DEFAULT_MEMORY_BUDGET) -> None:
        self.budget = budget
        self._entries: OrderedDict[tuple[Any, ...], PrefixEntry] = OrderedDict()
        self._splits: dict[tuple[int, str, str], tuple[nn.Module, Split | None, str]] = {}
        self.stats = {"reused": 0, "stored": 0}

    def split(self, model: nn.Module, layer: str,
              how: Callable[[nn.Module, str], tuple[Split | None, str]] = split_at
              ) -> tuple[Split | None, str]:
        """:func:`~pytest_unitablate.core.scan.split.split_at` (or ``how``), traced once
        per model, layer and way of splitting."""
        key = (id(model), layer, getattr(how, "__name__", str(how)))
        if getattr(type(model), "unitablate_wrapped", None) is not None:
            return None, "a next-token view of a language model runs its forward whole"
        if key not in self._splits or self._splits[key][0] is not model:
            self._splits[key] = (model, *how(model, layer))
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


def _sources(split: Split) -> list[str] | None:
    """Where each prefix output comes from in the eager model: ``""`` for the model's input,
    else the name of the module whose output it is; ``None`` if one is anything else."""
    out = next(n for n in split.prefix.graph.nodes if n.op == "output")
    names: list[str] = []
    for node in out.args[0]:
        if node.op == "placeholder":
            names.append("")
        elif node.op == "call_module":
            names.append(str(node.target))
        else:
            return None
    placeholders = [n for n in split.prefix.graph.nodes if n.op == "placeholder"]
    return names if len(placeholders) == 1 else None


def _same_as_prefix(split: Split | None, inputs: Any, kept: tuple[Any, ...]) -> bool:
    """Whether values copied from the eager forward equal the prefix graph's outputs on
    the first examples of the batch."""
    if split is None or not isinstance(inputs, torch.Tensor):
        return False
    few = min(16, inputs.shape[0])
    theirs = split.prefix(inputs[:few])
    for ours, ref in zip(kept, theirs, strict=True):
        if not isinstance(ref, torch.Tensor) or ours.shape[1:] != ref.shape[1:]:
            return False
        if ours.shape[0] != inputs.shape[0] or not torch.allclose(ours[:few], ref, rtol=1e-5,
                                                                   atol=1e-6):
            return False
    return True


def evaluate_keeping(model: nn.Module, data: Any, layers: Sequence[str], cache: PrefixCache,
                     *, device: torch.device | str | None = None, batch_size: int = 256,
                     output: int | str | None = None) -> EvalResult:
    """:func:`~pytest_unitablate.core.evaluation.evaluate`, which also leaves the prefix
    outputs and logits of each of ``layers`` in ``cache`` (those ``torch.fx`` can split, whose
    prefix outputs are the model's input or outputs of modules called once per forward,
    within the cache's budget over all of them). The result is ``evaluate()``'s: the hooks
    only copy values."""
    place = torch.device(device) if device is not None else model_device(model)
    if isinstance(first_inputs(data), TokenBatch):  # a graph takes tensors, not dicts
        return evaluate(model, data, device=place, batch_size=batch_size, output=output)
    plans: dict[str, list[str]] = {}
    for layer in dict.fromkeys(layers):
        split, _ = cache.split(model, layer)
        names = _sources(split) if split is not None else None
        if names is not None:
            plans[layer] = names
    if not plans:
        return evaluate(model, data, device=place, batch_size=batch_size, output=output)
    seen: dict[str, list[Any]] = {name: [] for names in plans.values() for name in names}
    recorders = {layer: cache.recorder() for layer in plans}
    began = [0.0]

    checking = [False]  # the check's own prefix pass calls the same modules

    def keep(name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if not checking[0]:
                seen[name].append(out.detach().clone() if isinstance(out, torch.Tensor)
                                  else None)
        return hook

    inputs: list[Any] = [None]

    def start(module: nn.Module, args: Any) -> None:
        began[0] = time.perf_counter()
        for values in seen.values():
            values.clear()
        inputs[0] = args[0] if args else None
        if "" in seen and isinstance(inputs[0], torch.Tensor):
            seen[""].append(inputs[0].detach().clone())

    def finish(module: nn.Module, args: Any, out: Any) -> None:
        try:
            logits = select_logits(out, output)
        except Exception:  # evaluate() says what is wrong with the output, and where
            logits = None
        for layer, names in plans.items():
            record = recorders[layer]
            if record.full:
                continue
            values = [seen[name] for name in names]
            if any(len(v) != 1 or v[0] is None for v in values) or not isinstance(
                    logits, torch.Tensor):
                record.give_up()  # called twice, or not a tensor: not kept
                continue
            kept = tuple(v[0] for v in values)
            if not record.batches:  # the first batch: a plain forward's cost, and a check
                record.prefix_seconds = record.whole_seconds = time.perf_counter() - began[0]
                checking[0] = True
                try:
                    same = _same_as_prefix(cache.split(model, layer)[0], inputs[0], kept)
                finally:
                    checking[0] = False
                if not same:  # e.g. an in-place op changed a value after its module
                    record.give_up()
                    continue
            record.add(kept, logits)
        while sum(r.nbytes for r in recorders.values() if not r.full) > cache.budget:
            max((r for r in recorders.values() if not r.full),
                key=lambda r: r.nbytes).give_up()  # the biggest goes first

    handles = [model.register_forward_pre_hook(start), model.register_forward_hook(finish)]
    handles += [model.get_submodule(name).register_forward_hook(keep(name))
                for name in seen if name]
    try:
        result = evaluate(model, data, device=place, batch_size=batch_size, output=output)
    finally:
        for handle in handles:
            handle.remove()
    for layer in plans:
        cache.put(model, data, layer, place, batch_size, recorders[layer], result.fingerprint)
    return result


__all__ = ["PrefixCache", "PrefixEntry", "Recorder", "StalePrefix", "evaluate_keeping"]
