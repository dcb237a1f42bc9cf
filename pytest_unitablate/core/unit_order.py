"""A cheap order in which to try a layer's units: a first-order estimate of their damage.

Layer-wide checks stop as soon as their outcome is decided (``any_unit`` once enough units
pass, ``every_unit`` at its first failing unit). They evaluate units *exactly*, one real
ablation each, but in the order this module estimates, so the deciding units come early.
The order never changes an outcome, only how many units are evaluated before it is known.

The estimate is the first-order Taylor expansion of the log-probability of each example's
true class around the unablated layer output ``a``: ablating unit ``u`` (replacing its
channel by ``r_u``) changes it by about ``sum(grad_u * (r_u - a_u))``, summed over the
positions of the channel and the examples of the target class (all examples for
``overall``). One forward and one backward pass over the data give it for every unit.
With a :class:`~pytest_unitablate.core.scan.prefix.PrefixCache`, the network is split at
the layer (``torch.fx``): the part before it runs once without autograd and its outputs
are kept for the scans that follow, and only the part after it runs forward and backward.

Example::

    damage = estimated_damage(model, loader, "layer3", target=7)
    order = sorted(range(len(damage)), key=lambda u: -damage[u])   # most damaging first
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pytest_unitablate.core.data import PassDigest, first_inputs, iter_batches
from pytest_unitablate.core.evaluation import (
    eval_mode,
    logits_agree,
    model_device,
    select_logits,
)
from pytest_unitablate.core.layers import first_tensor, resolve_layer
from pytest_unitablate.core.layout import DimResolver
from pytest_unitablate.core.scan.collect import replacement_values
from pytest_unitablate.core.scan.prefix import PrefixCache, StalePrefix
from pytest_unitablate.core.scan.split import Split
from pytest_unitablate.core.tokens import TokenBatch, call_model


class _Sums:
    """Per class: the estimated damage of every unit, summed over the class's examples."""

    def __init__(self, ablation: str | float, means: dict[str, torch.Tensor] | None,
                 layer: str, dims: DimResolver) -> None:
        self.ablation, self.means, self.layer, self.dims = ablation, means, layer, dims
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}

    def add(self, leaf: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """``logits`` computed from ``leaf`` (the layer's output, requiring grad)."""
        logp = torch.log_softmax(logits.float(), dim=1)
        chosen = logp.gather(1, labels[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, leaf)
        a = leaf.detach()
        dim = self.dims(a)
        repl = replacement_values(self.ablation, self.means, self.layer, a, dim)
        shape = [1] * a.dim()
        shape[dim] = a.shape[dim]
        change = (grad * (repl.view(shape) - a)).movedim(dim, 0)
        # (units, examples, positions) -> per example and unit
        per_example = -change.reshape(change.shape[0], change.shape[1], -1).sum(
            dim=2).double().cpu()
        kept = labels.cpu()
        for k in torch.unique(kept).tolist():
            rows = per_example[:, kept == k].sum(dim=1)
            self.sums[k] = rows if k not in self.sums else self.sums[k] + rows
            self.counts[k] = self.counts.get(k, 0) + int((kept == k).sum())

    def table(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        if not self.sums:
            return np.zeros((0, 0), dtype=np.float64), np.zeros(0, dtype=np.int64)
        width = max(self.sums) + 1
        units = len(next(iter(self.sums.values())))
        table = np.zeros((units, width), dtype=np.float64)
        count = np.zeros(width, dtype=np.int64)
        for k, rows in self.sums.items():
            table[:, k] = rows.numpy()
            count[k] = self.counts[k]
        return table, count


class _NotOneTensor(Exception):
    """The split network cannot stand in for the model here: the layer's output is not
    one tensor, or the split's logits differ from the model's."""


def _split_matches(model: nn.Module, split: Split, inputs: torch.Tensor,
                   output: int | str | None) -> bool:
    """Whether the split network gives the model's logits on a few examples (as the scan
    engine checks its ablations on the first batch)."""
    few = inputs[:16]
    with torch.no_grad():
        real = select_logits(call_model(model, few), output)
        ours = select_logits(split.suffix(*split.prefix(few)), output)
    return logits_agree(ours, real)


def _rows(value: Any, keep: torch.Tensor, batch: int) -> Any:
    """A per-example tensor restricted to the kept examples, any other tensor whole: as a
    new normal tensor (a scan keeps inference tensors, which autograd cannot use, and the
    kept values must not change)."""
    if isinstance(value, torch.Tensor):
        return value[keep] if value.dim() > 0 and value.shape[0] == batch else value.clone()
    return value


def class_damage_sums(
    model: nn.Module,
    data: Any,
    layer: str,
    *,
    target: int | None = None,
    ablation: str | float = "zero",
    means: dict[str, torch.Tensor] | None = None,
    channel_dim: int | None = None,
    device: torch.device | str | None = None,
    output: int | str | None = None,
    batch_size: int = 256,
    prefix_cache: PrefixCache | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per unit and per class: the estimated loss of true-class log-probability, summed
    over the examples of that class, when the unit alone is ablated; and the examples
    per class. Shapes ``(units, classes)`` and ``(classes,)``; ``classes`` is one more
    than the largest label seen. With ``target``, only examples labelled ``target`` run.

    The model's parameters are not touched and need not require gradients: the gradient
    is taken with respect to a copy of the layer's output, and only the network after the
    layer records a graph for backward (the layers before it run without one). Raises
    whatever autograd raises on a model that cannot be differentiated. ``prefix_cache``:
    see the module's docstring (a model ``torch.fx`` cannot split uses forward hooks).
    """
    dims = DimResolver(model, layer, channel_dim)
    sums = _Sums(ablation, means, layer, dims)
    split = prefix_cache.split(model, layer)[0] if prefix_cache is not None and \
        not isinstance(first_inputs(data), TokenBatch) else None
    if split is not None and prefix_cache is not None:
        place = torch.device(device) if device is not None else model_device(model)
        try:
            for cache in (prefix_cache, None):  # None: the data changed since it was kept
                sums = _Sums(ablation, means, layer, dims)
                try:
                    _through_split(model, split, cache, data, layer, place, batch_size,
                                   target, output, sums)
                    return sums.table()
                except StalePrefix:
                    prefix_cache.drop(model, data, layer, place, batch_size)
        except _NotOneTensor:  # a layer with a tuple output: hooks take its first tensor
            sums = _Sums(ablation, means, layer, dims)
    module = resolve_layer(model, layer)
    captured: list[torch.Tensor] = []

    def hook(m: nn.Module, args: Any, out: Any) -> Any:
        tensor = first_tensor(out)
        if tensor is None:
            return None
        # The forward runs under no_grad up to here, so the prefix keeps no activations
        # for backward (the memory of a big model's early layers); the rest of this
        # forward records a graph from the layer's output on (the no_grad block restores
        # the grad mode when the forward returns).
        torch.set_grad_enabled(True)
        leaf = tensor.detach().clone().requires_grad_(True)
        captured.append(leaf)
        ablatable = leaf * 1  # not a leaf: in-place ops after the layer stay legal
        if isinstance(out, torch.Tensor):
            return ablatable
        return (ablatable, *out[1:])

    handle = module.register_forward_hook(hook)
    try:
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            for inputs, labels in iter_batches(data, batch_size=batch_size, device=device):
                keep = torch.ones_like(labels, dtype=torch.bool) if target is None \
                    else labels == target
                if not bool(keep.any()):
                    continue
                captured.clear()
                with torch.no_grad():
                    produced = call_model(model, inputs[keep])
                sums.add(captured[0], select_logits(produced, output), labels[keep])
    finally:
        handle.remove()
    return sums.table()


def _through_split(model: nn.Module, split: Split, cache: PrefixCache | None, data: Any,
                   layer: str, device: torch.device, batch_size: int, target: int | None,
                   output: int | str | None, sums: _Sums) -> None:
    """:func:`class_damage_sums` on the split network: the prefix without autograd (or out
    of ``cache``, which it fills; ``StalePrefix`` when the kept pass no longer matches the
    data), the suffix forward and backward."""
    entry = cache.get(model, data, layer, device, batch_size) if cache is not None else None
    recording = cache.recorder() if cache is not None and entry is None else None
    digest = PassDigest()
    seen = 0
    checked = False
    with eval_mode(model), eval_mode(split.prefix), eval_mode(split.suffix), \
            torch.inference_mode(False):
        for index, (inputs, labels) in enumerate(
                iter_batches(data, batch_size=batch_size, device=device, digest=digest)):
            seen += 1
            keep = torch.ones_like(labels, dtype=torch.bool) if target is None \
                else labels == target
            stored = entry.batch(index, labels.shape[0]) if entry is not None else None
            whole = recording is not None and not recording.full
            if stored is None and not whole and not bool(keep.any()):
                continue
            if stored is None:  # the whole batch when it is kept for later passes
                began = time.perf_counter()
                with torch.no_grad():
                    produced = split.prefix(inputs if whole else inputs[keep])
                if whole:
                    assert recording is not None
                    if index == 0:
                        recording.prefix_seconds = time.perf_counter() - began
                    recording.add(produced)
            else:
                produced = stored
            if not isinstance(produced[0], torch.Tensor):
                raise _NotOneTensor
            if not checked:  # once, on the first batch that gets here
                if not _split_matches(model, split, inputs, output):
                    raise _NotOneTensor  # e.g. an in-place op fx dropped as dead code
                checked = True
            if not bool(keep.any()):
                continue
            batch = produced[0].shape[0]
            if stored is not None or whole:  # copies: the kept values stay as they are
                produced = tuple(_rows(v, keep, batch) for v in produced)
            # (otherwise this pass's own prefix outputs, made without autograd)
            leaf = produced[0].detach().requires_grad_(True)
            with torch.enable_grad():
                logits = select_logits(split.suffix(leaf * 1, *produced[1:]), output)
                sums.add(leaf, logits, labels[keep])
    if entry is not None:
        entry.check_pass(digest.hexdigest(), seen)
    if cache is not None and recording is not None:
        cache.put(model, data, layer, device, batch_size, recording, digest.hexdigest())


def estimated_damage(
    model: nn.Module,
    data: Any,
    layer: str,
    *,
    target: int | None = None,
    ablation: str | float = "zero",
    means: dict[str, torch.Tensor] | None = None,
    channel_dim: int | None = None,
    device: torch.device | str | None = None,
    output: int | str | None = None,
    batch_size: int = 256,
    prefix_cache: PrefixCache | None = None,
) -> npt.NDArray[np.float64]:
    """Per unit of ``layer``: the estimated loss of true-class log-probability when it
    alone is ablated (larger = more damage), over the examples labelled ``target``
    (``None``: every example). See :func:`class_damage_sums`.
    """
    sums, _ = class_damage_sums(model, data, layer, target=target, ablation=ablation,
                                means=means, channel_dim=channel_dim, device=device,
                                output=output, batch_size=batch_size,
                                prefix_cache=prefix_cache)
    if sums.size == 0:
        return np.zeros(0, dtype=np.float64)
    out: npt.NDArray[np.float64] = sums.sum(axis=1)
    return out


__all__ = ["class_damage_sums", "estimated_damage"]
