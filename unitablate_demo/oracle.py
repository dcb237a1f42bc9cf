"""Single-unit ablation measurements with plain forward hooks (independent of the core).

For one model and one layer, every unit is ablated alone (its channel of the layer's output
replaced by zero, out of place) and the model is evaluated on the whole test split in one
batch; the result holds the overall and per-class accuracy drops in percentage points.
These numbers are the source of the thresholds in ``specs/*.yaml`` and of the findings
table (``python -m unitablate_demo.findings``).

Command line::

    python -m unitablate_demo.oracle --checkpoint resnet --layer layer3.1 [--json out.json]
    python -m unitablate_demo.oracle --checkpoint vit --unit head \
        --layer encoder.layers.encoder_layer_1.self_attention
    python -m unitablate_demo.oracle --checkpoint vit --channel-dim -1 \
        --layer encoder.layers.encoder_layer_0.mlp.1

prints, per class, the units whose ablation hurts that class most.

Example::

    >>> from unitablate_demo.models import load_model
    >>> d = unit_drops(load_model("resnet"), "layer3.1", *load_split("test"))
    >>> d.class_drop.shape
    (16, 10)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from unitablate_demo import CLASS_NAMES
from unitablate_demo.data import SplitName, load_split
from unitablate_demo.models import load_model

NUM_CLASSES = len(CLASS_NAMES)


@contextmanager
def zero_units(model: nn.Module, layer: str, units: Sequence[int], dim: int = 1
               ) -> Iterator[None]:
    """Replace channels ``units`` (along ``dim``) of ``layer``'s output by zero (out of
    place) inside the block."""
    module = dict(model.named_modules())[layer]

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        axis = dim % out.dim()
        keep = torch.ones(out.shape[axis], dtype=out.dtype, device=out.device)
        keep[list(units)] = 0.0
        shape = [1] * out.dim()
        shape[axis] = -1
        return out * keep.view(shape)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _ColumnMask(nn.Module):
    """A parametrization: the weight with some input columns zeroed."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.mask: torch.Tensor
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


@contextmanager
def zero_heads(model: nn.Module, layer: str, heads: Sequence[int]) -> Iterator[None]:
    """Zero attention heads of the ``nn.MultiheadAttention`` ``layer`` by weight surgery: the
    output projection's input columns of those heads are masked (a
    ``torch.nn.utils.parametrize`` parametrization, removed on exit; gradients flow to the
    unmasked weights, so training with it works). Independent of ``pytest_unitablate``,
    which ablates the heads' outputs before the projection instead."""
    from torch.nn.utils import parametrize

    attention = dict(model.named_modules())[layer]
    assert isinstance(attention, nn.MultiheadAttention), layer
    size = attention.embed_dim // attention.num_heads
    mask = torch.ones_like(attention.out_proj.weight)
    for head in heads:
        mask[:, head * size:(head + 1) * size] = 0.0
    parametrize.register_parametrization(attention.out_proj, "weight", _ColumnMask(mask))
    try:
        yield
    finally:
        parametrize.remove_parametrizations(attention.out_proj, "weight",
                                            leave_parametrized=False)


@contextmanager
def zero(model: nn.Module, layer: str, units: Sequence[int], unit: str = "channel",
         dim: int = 1) -> Iterator[None]:
    """:func:`zero_heads` for ``unit="head"``, else :func:`zero_units` along ``dim``."""
    if unit == "head":
        with zero_heads(model, layer, units):
            yield
    else:
        with zero_units(model, layer, units, dim):
            yield


def accuracies(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, npt.NDArray[np.float64]]:
    """Overall and per-class (recall) top-1 accuracy, as fractions."""
    model.eval()
    with torch.inference_mode():
        pred = model(x).argmax(1)
    correct = (pred == y).numpy()
    labels = y.numpy()
    per_class = np.array([correct[labels == k].mean() for k in range(NUM_CLASSES)])
    return float(correct.mean()), per_class


def num_units(model: nn.Module, layer: str, x: torch.Tensor, unit: str = "channel",
              dim: int = 1) -> int:
    """Heads of an attention ``layer``, or channels (along ``dim``) of ``layer``'s output,
    found by one forward on two examples."""
    module = dict(model.named_modules())[layer]
    if unit == "head":
        assert isinstance(module, nn.MultiheadAttention)
        return int(module.num_heads)
    seen: list[int] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        tensor = out[0] if isinstance(out, tuple) else out
        seen.append(tensor.shape[dim])

    handle = module.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model.eval()(x[:2])
    finally:
        handle.remove()
    return seen[0]


@dataclass(frozen=True)
class LayerDrops:
    """Drops (pp) from ablating each unit of one layer alone."""

    layer: str
    base_overall: float  # pp
    base_class: npt.NDArray[np.float64]  # (K,) pp
    overall_drop: npt.NDArray[np.float64]  # (C,) pp
    class_drop: npt.NDArray[np.float64]  # (C, K) pp

    def top_units(self, k: int, n: int = 3) -> list[tuple[int, float]]:
        """The ``n`` units whose ablation drops class ``k`` most, with the drop."""
        order = np.argsort(-self.class_drop[:, k], kind="stable")[:n]
        return [(int(u), float(self.class_drop[u, k])) for u in order]


def _head_after(model: nn.Module, layer: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The demo AlexNet's modules after ``conv5`` (relu5, avgpool, fc), called as its own
    ``forward`` calls them; ``None`` for every other (model, layer)."""
    from unitablate_demo.models import DigitsAlexNet

    if not (isinstance(model, DigitsAlexNet) and layer == "conv5"):
        return None
    m = model
    return lambda a: m.fc(torch.flatten(m.avgpool(m.relu5(a)), 1))


def _drops_from(base_o: float, base_c: npt.NDArray[np.float64], pred: torch.Tensor,
                y: torch.Tensor) -> tuple[float, npt.NDArray[np.float64]]:
    correct = (pred == y).numpy()
    labels = y.numpy()
    per_class = np.array([correct[labels == k].mean() for k in range(NUM_CLASSES)])
    return base_o - float(correct.mean()), base_c - per_class


def unit_drops(
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    y: torch.Tensor,
    units: Sequence[int] | None = None,
    unit: str = "channel",
    dim: int = 1,
) -> LayerDrops:
    """Ablate each unit of ``layer`` alone (zero) and measure overall and per-class drops.

    Every unit costs one hooked forward of the whole model, except for the demo AlexNet's
    ``conv5``: there its output is captured once and only the head after it (relu5, avgpool,
    fc: the modules themselves, not a formula) runs per unit; two units are then checked
    against full hooked forwards, so the shortcut cannot silently disagree with them.
    """
    base_o, base_c = accuracies(model, x, y)
    if units is None:
        units = range(num_units(model, layer, x, unit, dim))
    units = list(units)
    head = _head_after(model, layer) if unit == "channel" and dim == 1 else None
    overall, per_class = [], []
    if head is None:
        for u in units:
            with zero(model, layer, [u], unit, dim):
                o, c = accuracies(model, x, y)
            overall.append(base_o - o)
            per_class.append(base_c - c)
    else:
        captured: list[torch.Tensor] = []
        module = dict(model.named_modules())[layer]
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.clone()))
        try:
            with torch.inference_mode():
                model.eval()(x)
        finally:
            handle.remove()
        with torch.inference_mode():
            for u in units:
                a = captured[0].clone()
                a[:, u] = 0.0
                o, c = _drops_from(base_o, base_c, head(a).argmax(1), y)
                overall.append(o)
                per_class.append(c)
        worst = int(np.argmax(np.asarray(per_class).max(axis=1)))
        for i in sorted({0, worst}):
            with zero_units(model, layer, [units[i]]):
                o, c = accuracies(model, x, y)
            if not (np.isclose(base_o - o, overall[i]) and np.allclose(base_c - c, per_class[i])):
                raise AssertionError(f"{layer} unit {units[i]}: the head shortcut disagrees "
                                     f"with a full hooked forward")
    return LayerDrops(
        layer=layer,
        base_overall=100 * base_o,
        base_class=100 * base_c,
        overall_drop=100 * np.asarray(overall),
        class_drop=100 * np.asarray(per_class),
    )


@lru_cache(maxsize=32)
def checkpoint_drops(checkpoint: str, layer: str, unit: str = "channel", dim: int = 1
                     ) -> LayerDrops:
    """:func:`unit_drops` of a shipped checkpoint on the test split, computed once per process.

    The findings table and the expected outcomes measure the same (checkpoint, layer)
    pairs; sharing the measurement halves the slow suite's AlexNet cost. Checkpoints are
    sha256-checked on load and never change at run time, so the cache cannot go stale.
    """
    x, y = load_split("test")
    return unit_drops(load_model(checkpoint), layer, x, y, unit=unit, dim=dim)


def group_drop(
    model: nn.Module, layer: str, units: Sequence[int], x: torch.Tensor, y: torch.Tensor,
    unit: str = "channel", dim: int = 1,
) -> tuple[float, npt.NDArray[np.float64]]:
    """Overall and per-class drops (pp) from ablating ``units`` of ``layer`` together."""
    base_o, base_c = accuracies(model, x, y)
    with zero(model, layer, units, unit, dim):
        o, c = accuracies(model, x, y)
    return 100 * (base_o - o), 100 * (base_c - c)


def head_profiles(model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor
                  ) -> npt.NDArray[np.float64]:
    """Class-damage profile of every head of the attention ``layer``, measured: ``[h, k]``
    is the mean over class-``k`` examples of the loss of true-class log-probability when
    head ``h`` is zeroed by weight surgery (:func:`zero_heads`)."""
    def true_logp() -> npt.NDArray[np.float64]:
        with torch.inference_mode():
            logp = torch.log_softmax(model.eval()(x).double(), dim=1)
        return logp.gather(1, y.view(-1, 1)).squeeze(1).numpy()

    base = true_logp()
    labels = y.numpy()
    rows = []
    for head in range(num_units(model, layer, x, "head")):
        with zero_heads(model, layer, [head]):
            loss = base - true_logp()
        rows.append([loss[labels == k].mean() for k in range(NUM_CLASSES)])
    return np.asarray(rows, dtype=np.float64)


def damage_profiles(model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor,
                    unit: str = "channel", dim: int = 1) -> npt.NDArray[np.float64]:
    """Class-damage profile of every unit of ``layer`` with one plain hook and autograd
    (the whole split in one batch): ``[u, k]`` is the mean over class-``k`` examples of
    ``-sum(grad * (0 - a_u))``, the first-order loss of true-class log-probability when
    unit ``u`` is zeroed (``unit="head"``: :func:`head_profiles`). Independent of
    ``pytest_unitablate.core.identity``."""
    if unit == "head":
        return head_profiles(model, layer, x, y)
    module = dict(model.named_modules())[layer]
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        leaf = out.detach().clone().requires_grad_(True)
        store["a"] = leaf
        return leaf * 1

    handle = module.register_forward_hook(hook)
    try:
        model.eval()
        with torch.enable_grad():
            logp = torch.log_softmax(model(x), dim=1).gather(1, y.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(logp, store["a"])
    finally:
        handle.remove()
    a = store["a"].detach().movedim(dim, 1)
    grad = grad.movedim(dim, 1)
    per = (grad * a).sum(dim=tuple(range(2, a.dim()))).double().numpy()  # (N, C)
    labels = y.numpy()
    return np.stack([per[labels == k].mean(axis=0) for k in range(NUM_CLASSES)], axis=1)


def match_recorded(recorded: Mapping[int, Sequence[float]], profiles: npt.NDArray[np.float64]
                   ) -> dict[int, tuple[int, float]]:
    """Recorded unit -> (unit, cosine similarity), one-to-one, largest total score: the
    cosine times the square root of the smaller profile norm over the larger (the size of
    the effect counts, not only its shape)."""
    from scipy.optimize import linear_sum_assignment

    keys = sorted(recorded)
    raw = np.array([recorded[k] for k in keys], dtype=np.float64)
    ref_norm = np.linalg.norm(raw, axis=1, keepdims=True)
    cur_norm = np.linalg.norm(profiles, axis=1, keepdims=True)
    sim = (raw / ref_norm) @ (profiles / cur_norm).T
    size = np.sqrt(np.minimum(ref_norm, cur_norm.T) / np.maximum(ref_norm, cur_norm.T))
    rows, cols = linear_sum_assignment(-(sim * size))
    return {keys[r]: (int(c), float(sim[r, c])) for r, c in zip(rows, cols, strict=True)}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description="Per-unit ablation drops of one layer.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--layer", action="append", required=True)
    p.add_argument("--split", default="test", choices=["train", "ranking", "test"])
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--json", help="write all drops to this JSON file")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--unit", choices=("channel", "head"), default="channel")
    p.add_argument("--channel-dim", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    split: SplitName = args.split
    x, y = load_split(split)
    out: dict[str, Any] = {}
    for layer in args.layer:
        d = unit_drops(model, layer, x, y, unit=args.unit, dim=args.channel_dim)
        print(
            f"{args.checkpoint} {layer}: baseline {d.base_overall:.2f}%, "
            f"max single-unit overall drop {d.overall_drop.max():.2f} pp"
        )
        for k, name in enumerate(CLASS_NAMES):
            tops = ", ".join(f"{u}: {v:.1f}" for u, v in d.top_units(k, args.top))
            print(f"  {name:>5} (base {d.base_class[k]:.1f}%): {tops}")
        out[layer] = {
            "base_overall": d.base_overall,
            "base_class": d.base_class.tolist(),
            "overall_drop": d.overall_drop.tolist(),
            "class_drop": d.class_drop.tolist(),
        }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
