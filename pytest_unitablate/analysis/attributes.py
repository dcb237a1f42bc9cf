"""Unit attributes (selectivity, weight norms, activation statistics) and their correlation
with ablation damage: the paper's third finding, measurable on any model.

Definitions (each example's activation is first averaged over spatial positions):

* **class selectivity** (Morcos et al. 2018): ``(mu_max - mu_rest) / (mu_max + mu_rest + 1e-6)``
  with ``mu_k`` the class-conditional mean activation, ``mu_max`` the largest and ``mu_rest``
  the mean of the other class means. It assumes non-negative activations (after a ReLU);
  on signed activations it is still computed but loses its [0, 1] meaning.
* **per-class selectivity** for class k: the same with ``mu_k`` in place of ``mu_max``.
* **l1_in**: L1 norm of the unit's incoming filter ``W[u]`` of the layer (Conv/Linear
  layers only; NaN otherwise). **l1_out**: L1 norm of ``W[:, u]`` of ``next_layer`` when
  that is a Conv/Linear whose input channels equal the layer's channels.
* **mean_activation**: mean over examples and positions. **sparsity**: the fraction of
  (example, position) activations that are <= 0.

Example::

    attrs = unit_attributes(model, loader, "layer3.0", next_layer="layer3.1.conv1")
    drops = scan(model, loader, "layer3.0").frame
    attribute_correlations(attrs, drops)     # Pearson and Spearman, with n and p-values
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pytest_unitablate.core.data import iter_batches
from pytest_unitablate.core.evaluation import eval_mode, model_device
from pytest_unitablate.core.heads import editing_heads, head_site
from pytest_unitablate.core.layers import first_tensor, resolve_layer
from pytest_unitablate.core.layout import DimResolver
from pytest_unitablate.core.tokens import call_model
from pytest_unitablate.errors import UnsupportedModelError, optional_import

if TYPE_CHECKING:
    import pandas as pd


def unit_attributes(model: nn.Module, data: Any, layer: str, *, next_layer: str | None = None,
                    channel_dim: int | None = None, device: torch.device | str | None = None,
                    unit: str = "channel", num_heads: int | None = None,
                    ) -> pd.DataFrame:
    """One row per unit: selectivity, per-class selectivity, norms, mean, sparsity.

    With ``unit="head"`` the units are the attention heads of ``layer``: a head's
    activation at a position is the L2 norm of its output there (non-negative, so
    selectivity keeps its meaning), ``l1_out`` the L1 norm of its columns of the output
    projection, and ``l1_in`` is not defined (NaN).
    """
    pd = optional_import("pandas", "analysis", "unit_attributes")

    module = resolve_layer(model, layer)
    dims = DimResolver(model, layer, channel_dim if unit == "channel" else 1)
    pooled_batches: list[torch.Tensor] = []
    labels_all: list[torch.Tensor] = []
    sums = {"act": 0.0, "n": 0}
    nonpos: list[torch.Tensor] = []
    means: list[torch.Tensor] = []
    seen: list[torch.Tensor] = []

    def hook(m: nn.Module, a: Any, out: Any) -> None:
        t = first_tensor(out)
        assert t is not None
        dim = dims(t)
        moved = t.detach().movedim(dim, 1).reshape(t.shape[0], t.shape[dim], -1).float()
        seen.append(moved.mean(dim=2))
        means.append(moved.sum(dim=(0, 2)))
        nonpos.append((moved <= 0).sum(dim=(0, 2)))
        sums["n"] += moved.shape[0] * moved.shape[2]

    target = torch.device(device) if device is not None else model_device(model)
    with _capturing(model, module, layer, unit, num_heads, hook), eval_mode(model):
        for inputs, labels in iter_batches(data, device=target):
            call_model(model, inputs)
            pooled_batches.append(seen.pop())
            labels_all.append(labels.cpu())
    pooled = torch.cat(pooled_batches).cpu().double().numpy()  # (N, C)
    label_arr = torch.cat(labels_all).numpy()
    classes = sorted(set(label_arr.tolist()))
    mu = np.stack([pooled[label_arr == k].mean(axis=0) for k in classes])  # (K, C)
    n_units = pooled.shape[1]
    table: dict[str, Any] = {"unit": np.arange(n_units)}
    mu_max = mu.max(axis=0)
    rest = (mu.sum(axis=0) - mu_max) / max(len(classes) - 1, 1)
    table["selectivity"] = (mu_max - rest) / (mu_max + rest + 1e-6)
    table["selective_class"] = np.asarray(classes)[mu.argmax(axis=0)]
    for i, k in enumerate(classes):
        others = (mu.sum(axis=0) - mu[i]) / max(len(classes) - 1, 1)
        table[f"selectivity_{k}"] = (mu[i] - others) / (mu[i] + others + 1e-6)
    if unit == "head":
        table["l1_in"] = np.full(n_units, np.nan)
        table["l1_out"] = _head_l1_out(model, layer, num_heads)
    else:
        table["l1_in"] = _l1_in(module, n_units)
        table["l1_out"] = _l1_out(model, next_layer, n_units)
    total = int(sums["n"])
    table["mean_activation"] = (torch.stack(means).sum(0) / total).cpu().numpy()
    table["sparsity"] = (torch.stack(nonpos).sum(0).double() / total).cpu().numpy()
    return pd.DataFrame(table)


@contextmanager
def _capturing(model: nn.Module, module: nn.Module, layer: str, unit: str,
               num_heads: int | None, hook: Any) -> Iterator[None]:
    """``hook(module, args, out)`` on every forward: the layer's output, or for heads each
    head's output norm laid out as ``(N, heads, positions)``."""
    if unit != "head":
        handle = module.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()
        return
    site = head_site(model, layer, num_heads)
    if site.kind == "functional":
        raise UnsupportedModelError(
            f"unit attributes of the heads of {layer!r}: torchvision's "
            f"{type(site.module).__name__} computes them per window, not per example")

    def capture(x: torch.Tensor) -> torch.Tensor:
        heads = x.reshape(*x.shape[:-1], site.num_heads, -1).norm(dim=-1)
        # MultiheadAttention computes (positions, N, E); a projection sees (N, ..., E)
        by_example = heads.movedim(1, 0) if site.kind == "mha" else heads
        hook(module, (), by_example.reshape(by_example.shape[0], -1, site.num_heads)
             .transpose(1, 2))
        return x

    with editing_heads(site, capture):
        yield


def _head_l1_out(model: nn.Module, layer: str, num_heads: int | None) -> Any:
    site = head_site(model, layer, num_heads)
    owner = {"mha": getattr(site.module, "out_proj", None),
             "functional": getattr(site.module, "proj", None),
             "projection": site.module}.get(site.kind)  # a hook point: W_O is not a module
    weight = getattr(owner, "weight", None)
    if not isinstance(weight, torch.Tensor) or type(owner).__name__ == "Conv1D":
        return np.full(site.num_heads, np.nan)
    columns = weight.detach().abs().reshape(weight.shape[0], site.num_heads, -1)
    return columns.sum(dim=(0, 2)).cpu().double().numpy()


def _l1_in(module: nn.Module, n_units: int) -> Any:
    weight = getattr(module, "weight", None)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and \
            isinstance(weight, torch.Tensor) and weight.shape[0] == n_units:
        return weight.detach().abs().reshape(n_units, -1).sum(1).cpu().double().numpy()
    return np.full(n_units, np.nan)


def _l1_out(model: nn.Module, next_layer: str | None, n_units: int) -> Any:
    if next_layer is None:
        return np.full(n_units, np.nan)
    nxt = resolve_layer(model, next_layer)
    weight = getattr(nxt, "weight", None)
    if isinstance(nxt, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and \
            isinstance(weight, torch.Tensor) and weight.shape[1] == n_units:
        return weight.detach().abs().transpose(0, 1).reshape(n_units, -1).sum(1).cpu() \
            .double().numpy()
    return np.full(n_units, np.nan)


UNIT_ATTRIBUTES = ("selectivity", "l1_in", "l1_out", "mean_activation", "sparsity")


def attribute_correlations(attributes: pd.DataFrame, drops: pd.DataFrame) -> pd.DataFrame:
    """Pearson and Spearman correlation of each attribute with the overall drop and with
    the class-specific drop (the unit's largest class drop; for per-class selectivity,
    ``selectivity_k`` against the drop of class k over all (unit, k) pairs)."""
    pd = optional_import("pandas", "analysis", "attribute_correlations")
    stats = optional_import("scipy.stats", "analysis", "attribute_correlations")

    overall = drops[drops.target == "overall"].set_index("unit")["drop"]
    per_class = drops[drops.target != "overall"]
    max_class = per_class.groupby("unit")["drop"].max()
    rows = []

    def add(attribute: str, outcome: str, x: Any, y: Any) -> None:
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
            return
        pr, pp = stats.pearsonr(x[ok], y[ok])
        sr, sp = stats.spearmanr(x[ok], y[ok])
        rows.append({"attribute": attribute, "against": outcome, "n": int(ok.sum()),
                     "pearson": float(pr), "pearson_p": float(pp),
                     "spearman": float(sr), "spearman_p": float(sp)})

    attrs = attributes.set_index("unit")
    for name in UNIT_ATTRIBUTES:
        if name in attrs:
            add(name, "overall drop", attrs[name], overall.reindex(attrs.index))
            add(name, "max class drop", attrs[name], max_class.reindex(attrs.index))
    xs, ys = [], []
    for _, row in per_class.iterrows():
        col = f"selectivity_{row['target']}"
        if col in attrs and row["unit"] in attrs.index:
            xs.append(attrs.at[row["unit"], col])
            ys.append(row["drop"])
    add("per-class selectivity", "drop of that class", xs, ys)
    return pd.DataFrame(rows)


def write_table(frame: pd.DataFrame, path: str) -> None:
    """Write CSV, or Parquet for a ``.parquet`` path (needs pyarrow)."""
    if str(path).endswith(".parquet"):
        try:
            frame.to_parquet(path)
        except ImportError as exc:
            raise ImportError(f"writing {path} needs pyarrow: pip install pyarrow ({exc})") \
                from None
    else:
        frame.to_csv(path, index=False)
