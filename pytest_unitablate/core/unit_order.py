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

Example::

    damage = estimated_damage(model, loader, "layer3", target=7)
    order = sorted(range(len(damage)), key=lambda u: -damage[u])   # most damaging first
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pytest_unitablate.core.data import iter_batches
from pytest_unitablate.core.evaluation import eval_mode, select_logits
from pytest_unitablate.core.layers import first_tensor, resolve_layer
from pytest_unitablate.core.scan_fx import replacement_values


def class_damage_sums(
    model: nn.Module,
    data: Any,
    layer: str,
    *,
    target: int | None = None,
    ablation: str | float = "zero",
    means: dict[str, torch.Tensor] | None = None,
    channel_dim: int = 1,
    device: torch.device | str | None = None,
    output: int | str | None = None,
    batch_size: int = 256,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per unit and per class: the estimated loss of true-class log-probability, summed
    over the examples of that class, when the unit alone is ablated; and the examples
    per class. Shapes ``(units, classes)`` and ``(classes,)``; ``classes`` is one more
    than the largest label seen. With ``target``, only examples labelled ``target`` run.

    The model's parameters are not touched and need not require gradients: the gradient
    is taken with respect to a copy of the layer's output, and only the network after the
    layer records a graph for backward (the layers before it run without one). Raises
    whatever autograd raises on a model that cannot be differentiated.
    """
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

    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
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
                    produced = model(inputs[keep])
                logits = select_logits(produced, output)
                logp = torch.log_softmax(logits.float(), dim=1)
                chosen = logp.gather(1, labels[keep][:, None]).sum()
                (grad,) = torch.autograd.grad(chosen, captured[0])
                a = captured[0].detach()
                dim = channel_dim if channel_dim >= 0 else a.dim() + channel_dim
                repl = replacement_values(ablation, means, layer, a, dim)
                shape = [1] * a.dim()
                shape[dim] = a.shape[dim]
                change = (grad * (repl.view(shape) - a)).movedim(dim, 0)
                # (units, examples, positions) -> per example and unit
                per_example = -change.reshape(change.shape[0], change.shape[1], -1).sum(
                    dim=2).double().cpu()
                kept = labels[keep].cpu()
                for k in torch.unique(kept).tolist():
                    rows = per_example[:, kept == k].sum(dim=1)
                    sums[k] = rows if k not in sums else sums[k] + rows
                    counts[k] = counts.get(k, 0) + int((kept == k).sum())
    finally:
        handle.remove()
    if not sums:
        return np.zeros((0, 0), dtype=np.float64), np.zeros(0, dtype=np.int64)
    width = max(sums) + 1
    units = len(next(iter(sums.values())))
    table = np.zeros((units, width), dtype=np.float64)
    count = np.zeros(width, dtype=np.int64)
    for k, rows in sums.items():
        table[:, k] = rows.numpy()
        count[k] = counts[k]
    return table, count


def estimated_damage(
    model: nn.Module,
    data: Any,
    layer: str,
    *,
    target: int | None = None,
    ablation: str | float = "zero",
    means: dict[str, torch.Tensor] | None = None,
    channel_dim: int = 1,
    device: torch.device | str | None = None,
    output: int | str | None = None,
    batch_size: int = 256,
) -> npt.NDArray[np.float64]:
    """Per unit of ``layer``: the estimated loss of true-class log-probability when it
    alone is ablated (larger = more damage), over the examples labelled ``target``
    (``None``: every example). See :func:`class_damage_sums`.
    """
    sums, _ = class_damage_sums(model, data, layer, target=target, ablation=ablation,
                                means=means, channel_dim=channel_dim, device=device,
                                output=output, batch_size=batch_size)
    if sums.size == 0:
        return np.zeros(0, dtype=np.float64)
    out: npt.NDArray[np.float64] = sums.sum(axis=1)
    return out


__all__ = ["class_damage_sums", "estimated_damage"]
