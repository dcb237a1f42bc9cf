"""Turning paired evaluations into measured drops and verdicts (torch-free).

A :class:`Measurement` is what one target shows under one ablation: n, baseline and ablated
accuracy, the drop with its paired confidence interval, and McNemar's p-value. A
:class:`Verdict` judges one constraint against it.

Example::

    >>> m = Measurement.from_correct([True] * 10, [True] * 6 + [False] * 4)
    >>> round(m.drop, 2), m.n
    (0.4, 10)
    >>> from pytest_unitablate.spec.model import Constraint
    >>> judge(Constraint("min_drop", 0.2), m).passed
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pytest_unitablate.spec.model import Constraint
from pytest_unitablate.verdicts.stats import PairedTable, mcnemar_exact_p, paired_drop_ci

DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Measurement:
    """One target under one ablation, measured on paired examples."""

    table: PairedTable
    ci_level: float = DEFAULT_LEVEL
    ci: tuple[float, float] = (0.0, 0.0)
    units: tuple[int, ...] = ()

    @classmethod
    def from_correct(
        cls,
        before: Iterable[Any],
        after: Iterable[Any],
        *,
        level: float = DEFAULT_LEVEL,
        units: tuple[int, ...] = (),
    ) -> Measurement:
        table = PairedTable.from_correct([bool(x) for x in before], [bool(x) for x in after])
        return cls(table=table, ci_level=level, ci=paired_drop_ci(table, level), units=units)

    @property
    def n(self) -> int:
        return self.table.n

    @property
    def baseline(self) -> float:
        return self.table.baseline

    @property
    def ablated(self) -> float:
        return self.table.ablated

    @property
    def drop(self) -> float:
        return self.table.drop

    @property
    def p_value(self) -> float:
        return mcnemar_exact_p(self.table)

    def interval(self, level: float) -> tuple[float, float]:
        """The paired interval of the drop at ``level`` (cached for the default level)."""
        return self.ci if level == self.ci_level else paired_drop_ci(self.table, level)

    def value(self, kind: str) -> float:
        """The measured quantity a constraint kind looks at (drop or relative drop)."""
        if "relative" in kind:
            return self.drop / self.baseline if self.baseline > 0 else float("nan")
        return self.drop

    def bound(self, kind: str, level: float) -> float:
        """The interval bound a ``min_*`` (lower) or ``max_*`` (upper) constraint uses."""
        lo, hi = self.interval(level)
        b = lo if kind.startswith("min") else hi
        if "relative" in kind:
            return b / self.baseline if self.baseline > 0 else float("nan")
        return b


@dataclass(frozen=True)
class Verdict:
    """A constraint judged against a measurement."""

    passed: bool
    observed: float  # what was compared: the point estimate or a CI bound
    by: str  # "point estimate" or "95% CI lower bound"
    margin: float  # how far inside (>0) or outside (<0) the threshold
    warn: bool = False
    notes: list[str] = field(default_factory=list)


def judge(constraint: Constraint, m: Measurement) -> Verdict:
    """Judge ``constraint`` on ``m``: the point estimate, or the CI bound with ``confidence``."""
    assert constraint.threshold is not None
    if constraint.confidence is not None:
        observed = m.bound(constraint.kind, constraint.confidence)
        side = "lower" if constraint.kind.startswith("min") else "upper"
        by = f"{constraint.confidence * 100:g}% CI {side} bound"
    else:
        observed = m.value(constraint.kind)
        by = "point estimate"
    if constraint.kind.startswith("min"):
        margin = observed - constraint.threshold
    else:
        margin = constraint.threshold - observed
    passed = margin >= -1e-12
    warn = passed and constraint.warn_margin is not None and margin < constraint.warn_margin
    return Verdict(passed=passed, observed=observed, by=by, margin=margin, warn=warn)


def record_value(kind: str, m: Measurement, level: float) -> float:
    """The threshold record mode writes: the CI bound on the safe side of the measurement."""
    return m.bound(kind, level)


def vacuous_threshold(kind: str, value: float, baseline: float, floor: float = 0.0
                      ) -> str | None:
    """Why ``value`` written as a ``kind`` threshold would make a check that cannot fail.

    ``value`` is the threshold as record mode would write it (rounded away from failing),
    ``baseline`` the target's baseline accuracy, ``floor`` the smallest ``min_*`` threshold
    worth keeping. Returns ``None`` when the threshold still guards something.

    >>> vacuous_threshold("min_drop", 0.0, 0.9)
    'a min_drop of 0.0 pp (at or below 0) passes whatever the ablation does'
    >>> vacuous_threshold("min_drop", 0.02, 0.9, floor=0.05)
    'a min_drop of 2.0 pp is below the record floor of 5.0 pp'
    >>> vacuous_threshold("max_drop", 0.95, 0.9)
    'a max_drop of 95.0 pp allows every drop: the baseline accuracy is 90.0%'
    >>> vacuous_threshold("min_drop", 0.3, 0.9) is None
    True
    """
    unit = "%" if "relative" in kind else " pp"
    if kind.startswith("min"):
        if value <= 1e-12:
            return (f"a {kind} of {value * 100:.1f}{unit} (at or below 0) passes whatever the "
                    f"ablation does")
        if value < floor - 1e-12:
            return (f"a {kind} of {value * 100:.1f}{unit} is below the record floor of "
                    f"{floor * 100:.1f}{unit}")
        return None
    most = 1.0 if "relative" in kind else baseline  # no drop exceeds the baseline accuracy
    if value >= most - 1e-12:
        return (f"a {kind} of {value * 100:.1f}{unit} allows every drop: the baseline "
                f"accuracy is {baseline * 100:.1f}%")
    return None


def writes(mode: str, *, has_threshold: bool, failing: bool) -> bool:
    """Whether record mode ``mode`` rewrites a threshold: every one (``all``), the empty
    ones (``new``), the empty and the failing ones (``failed``), none (``none``).

    >>> writes("failed", has_threshold=True, failing=False)
    False
    """
    if mode == "all":
        return True
    if mode in ("new", "failed") and not has_threshold:
        return True
    return mode == "failed" and failing
