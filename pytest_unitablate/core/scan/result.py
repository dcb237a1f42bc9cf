"""What a scan returns: :class:`ScanResult`, one row per unit (or unit set) ablated, and
how a request's units become those rows (:func:`variants_of`).

Example::

    result = scan(model, loader, "layer4")
    result.frame          # tidy DataFrame: unit, target, n, baseline, ablated, drop,
                          # and the same in log-probability of the true class (nats)
    result.unit_correct(3)   # per-example correctness with unit 3 ablated
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from pytest_unitablate.core.evaluation import EvalResult
from pytest_unitablate.core.layers import one_unit, refuse_mask, unit_indices
from pytest_unitablate.errors import ConfigError, optional_import

if TYPE_CHECKING:
    import pandas as pd


#: What one row of a scan ablates: one unit, or a tuple of units ablated together.
Unit = int | tuple[int, ...]


def variants_of(layer: str, units: Sequence[int | Sequence[int]]
                ) -> tuple[tuple[Unit, ...], tuple[tuple[int, ...], ...]]:
    """The rows of a scan: each element of ``units`` as the result names it (an int, or a
    tuple), and as the engines take it (always a tuple of indices).

    >>> variants_of("conv5", [3, (4, 7)])
    ((3, (4, 7)), ((3,), (4, 7)))
    """
    labels: list[Unit] = []
    variants: list[tuple[int, ...]] = []
    refuse_mask(layer, units)
    if one_unit(units):
        units = [units]  # type: ignore[list-item]  # one unit, as scan(units=5)
    for element in units:
        if one_unit(element):  # (a float here is refused)
            (unit,) = unit_indices(layer, [element])
            labels.append(unit)
            variants.append((unit,))
        else:
            group = tuple(dict.fromkeys(unit_indices(layer, element)))
            if not group:
                raise ConfigError(f"scan of {layer!r}: an empty set of units to ablate")
            labels.append(group)
            variants.append(group)
    return tuple(labels), tuple(variants)


@dataclass(frozen=True)
class ScanResult:
    """Per-unit results of :func:`scan`; arrays are indexed ``[unit position, example]``.

    ``units`` holds what was ablated in each row, as the caller gave it: a unit index, or
    a tuple of indices ablated together."""

    layer: str
    units: tuple[Unit, ...]
    predictions: npt.NDArray[np.int64]
    labels: npt.NDArray[np.int64]
    baseline: EvalResult
    method: str
    reason: str = ""
    plan: str = ""
    #: log-probability of the true class, ``[unit position, example]`` (nats, float32)
    logprobs: npt.NDArray[np.float32] | None = None
    #: resample ablation with several draws: each example's share of draws it was right
    #: in (``predictions`` then hold the first draw's); ``None`` otherwise
    shares: npt.NDArray[np.float64] | None = None

    @property
    def correct(self) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = self.predictions == self.labels[None, :]
        return out

    def unit_correct(self, unit: Unit) -> npt.NDArray[np.bool_]:
        """Per-example correctness with ``unit`` (an index, or a tuple of them) ablated."""
        out: npt.NDArray[np.bool_] = self.correct[self.units.index(unit)]
        return out

    @property
    def frame(self) -> pd.DataFrame:
        """One row per (unit, target): ``unit``, ``target`` (class index or
        ``"overall"``), ``n``, ``baseline``, ``ablated``, ``drop`` (accuracy, fractions),
        then ``baseline_logprob``, ``ablated_logprob`` and ``logprob_drop``: the mean
        log-probability of the true class over the target's examples before and after,
        and their difference (nats; what ``min_logprob_drop`` and ``max_logprob_drop``
        judge). Needs pandas (the ``scan`` extra).

        >>> import torch
        >>> from torch import nn
        >>> from pytest_unitablate import scan
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> x, y = torch.randn(30, 4), torch.arange(30) % 3
        >>> frame = scan(model, (x, y), "1", progress=False).frame
        >>> list(frame.columns)  # doctest: +NORMALIZE_WHITESPACE
        ['unit', 'target', 'n', 'baseline', 'ablated', 'drop', 'baseline_logprob',
         'ablated_logprob', 'logprob_drop']
        >>> len(frame)  # 6 units x (overall + 3 classes)
        24
        """
        pd = optional_import("pandas", "scan", "ScanResult.frame")

        base = self.baseline
        classes = base.num_classes
        counts = base.class_counts
        rows: list[dict[str, Any]] = []
        correct = self.correct
        base_lp = np.asarray(base.true_logprob, dtype=np.float64)
        labels = self.labels
        masks: list[tuple[int | str, Any]] = [("overall", np.ones(len(labels), dtype=bool))] + [
            (k, labels == k) for k in range(classes) if counts[k]]
        for i, unit in enumerate(self.units):
            after_lp = np.asarray(self.logprobs[i], dtype=np.float64) \
                if self.logprobs is not None else None
            for target, mask in masks:
                b = base.accuracy if isinstance(target, str) else \
                    float(base.class_accuracy[target])
                ab = float(correct[i][mask].mean())
                blp = float(base_lp[mask].mean())
                alp = float(after_lp[mask].mean()) if after_lp is not None else float("nan")
                rows.append({"unit": unit, "target": target, "n": int(mask.sum()),
                             "baseline": b, "ablated": ab, "drop": b - ab,
                             "baseline_logprob": blp, "ablated_logprob": alp,
                             "logprob_drop": blp - alp})
        return pd.DataFrame(rows, columns=["unit", "target", "n", "baseline", "ablated",
                                           "drop", "baseline_logprob", "ablated_logprob",
                                           "logprob_drop"])

    def to_pandas(self) -> pd.DataFrame:
        """:attr:`frame` (the name pandas-producing APIs often use)."""
        return self.frame


__all__ = ["ScanResult", "Unit", "variants_of"]
