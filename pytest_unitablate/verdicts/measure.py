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

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pytest_unitablate.spec.model import Constraint
from pytest_unitablate.verdicts.stats import (
    PairedDiffs,
    PairedTable,
    mcnemar_exact_p,
    mean_drop_ci,
    paired_drop_ci,
    paired_t_p,
    wilson,
)

DEFAULT_LEVEL = 0.95


def metric_of(kind: str) -> str:
    """The measure a constraint kind judges: ``logprob`` or ``accuracy``.

    >>> metric_of("min_logprob_drop"), metric_of("max_relative_drop")
    ('logprob', 'accuracy')
    """
    return "logprob" if "logprob" in kind else "accuracy"


def drop_text(kind: str, value: float | None) -> str:
    """A drop in the units of its constraint kind: ``12.5 pp``, ``40.0%`` (relative, and
    an accuracy) or ``0.412 nats``.

    >>> drop_text("min_drop", 0.125), drop_text("min_logprob_drop", 0.4123)
    ('12.5 pp', '0.412 nats')
    >>> drop_text("min_accuracy", 0.85)
    '85.0%'
    """
    if value is None or math.isnan(value):
        return "n/a"
    if metric_of(kind) == "logprob":
        return f"{value:.3f} nats"
    return f"{value * 100:.1f}{'%' if 'relative' in kind or is_accuracy(kind) else ' pp'}"


def is_accuracy(kind: str) -> bool:
    """Whether ``kind`` judges the target's own accuracy (no ablation): ``min_accuracy``."""
    return kind.endswith("_accuracy")


@dataclass(frozen=True)
class Measurement:
    """One target under one ablation, measured on paired examples.

    ``metric`` ``accuracy`` holds the paired 2x2 ``table`` (drops in fractions, Newcombe's
    interval, McNemar's p); ``logprob`` holds ``diffs``, the per-example drops of the
    log-probability of the true class (nats, Student's t interval, the paired t-test).
    """

    table: PairedTable | None
    ci_level: float = DEFAULT_LEVEL
    ci: tuple[float, float] = (0.0, 0.0)
    units: tuple[int, ...] = ()
    metric: str = "accuracy"
    diffs: PairedDiffs | None = None

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

    @classmethod
    def from_logprob(
        cls,
        before: Iterable[Any],
        after: Iterable[Any],
        *,
        level: float = DEFAULT_LEVEL,
        units: tuple[int, ...] = (),
    ) -> Measurement:
        """The mean drop of ``log p(true class)`` (``before - after``, nats).

        >>> m = Measurement.from_logprob([-0.1, -0.2, -0.1], [-1.1, -0.2, -2.1])
        >>> round(m.drop, 3), m.n, m.metric
        (1.0, 3, 'logprob')
        """
        diffs = PairedDiffs.from_values([float(x) for x in before], [float(x) for x in after])
        return cls(table=None, ci_level=level, ci=mean_drop_ci(diffs, level), units=units,
                   metric="logprob", diffs=diffs)

    @classmethod
    def from_shares(cls, before: Iterable[Any], after: Iterable[Any], *,
                    level: float = DEFAULT_LEVEL, units: tuple[int, ...] = ()
                    ) -> Measurement:
        """An accuracy drop where each ablated example counts the share of several
        resample draws it was right in: the mean per-example drop, with Student's t
        interval and the paired t-test (McNemar's table needs one answer per example).

        >>> m = Measurement.from_shares([True] * 4, [1.0, 0.5, 0.5, 1.0])
        >>> round(m.drop, 2), m.metric, m.table is None
        (0.25, 'accuracy', True)
        """
        diffs = PairedDiffs.from_values([float(bool(x)) for x in before],
                                        [float(x) for x in after])
        return cls(table=None, ci_level=level, ci=mean_drop_ci(diffs, level), units=units,
                   metric="accuracy", diffs=diffs)

    @classmethod
    def of(cls, kind: str, correct: tuple[Any, Any], logprob: tuple[Any, Any], *,
           level: float = DEFAULT_LEVEL, units: tuple[int, ...] = ()) -> Measurement:
        """The measurement a constraint ``kind`` judges, from the (baseline, ablated)
        correctness or log-probabilities of the same examples. Ablated correctness given
        as shares (floats: several resample draws) is measured with :meth:`from_shares`."""
        if metric_of(kind) == "logprob":
            return cls.from_logprob(*logprob, level=level, units=units)
        dtype = getattr(correct[1], "dtype", None)
        if dtype is not None and getattr(dtype, "kind", "") == "f":
            return cls.from_shares(*correct, level=level, units=units)
        return cls.from_correct(*correct, level=level, units=units)

    @property
    def n(self) -> int:
        return self.diffs.n if self.diffs is not None else self._table.n

    @property
    def _table(self) -> PairedTable:
        assert self.table is not None
        return self.table

    @property
    def baseline(self) -> float:
        """Baseline accuracy (a fraction), or mean log p(true) at baseline (nats)."""
        return self.diffs.before if self.diffs is not None else self._table.baseline

    @property
    def ablated(self) -> float:
        return self.diffs.after if self.diffs is not None else self._table.ablated

    @property
    def drop(self) -> float:
        return self.diffs.mean if self.diffs is not None else self._table.drop

    @property
    def p_value(self) -> float:
        return paired_t_p(self.diffs) if self.diffs is not None else \
            mcnemar_exact_p(self._table)

    def interval(self, level: float) -> tuple[float, float]:
        """The paired interval of the drop at ``level`` (cached for the default level)."""
        if level == self.ci_level:
            return self.ci
        if self.diffs is not None:
            return mean_drop_ci(self.diffs, level)
        return paired_drop_ci(self._table, level)

    def value(self, kind: str) -> float:
        """The measured quantity a constraint kind looks at (drop, relative drop, or the
        baseline accuracy for ``min_accuracy``)."""
        if is_accuracy(kind):
            return self.baseline
        if "relative" in kind:
            return self.drop / self.baseline if self.baseline > 0 else float("nan")
        return self.drop

    def bound(self, kind: str, level: float) -> float:
        """The interval bound a ``min_*`` (lower) or ``max_*`` (upper) constraint uses (for
        ``min_accuracy``: Wilson's interval of the baseline accuracy)."""
        if is_accuracy(kind):
            lo, hi = wilson(round(self.baseline * self.n), self.n, level)
            return lo if kind.startswith("min") else hi
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
    worth keeping (of an accuracy kind). Returns ``None`` when the threshold still guards
    something.

    >>> vacuous_threshold("min_drop", 0.0, 0.9)
    'a min_drop of 0.0 pp (at or below 0) passes whatever the ablation does'
    >>> vacuous_threshold("min_drop", 0.02, 0.9, floor=0.05)
    'a min_drop of 2.0 pp is below the record floor of 5.0 pp'
    >>> vacuous_threshold("max_drop", 0.95, 0.9)
    'a max_drop of 95.0 pp allows every drop: the baseline accuracy is 90.0%'
    >>> vacuous_threshold("min_drop", 0.3, 0.9) is None
    True
    >>> vacuous_threshold("min_logprob_drop", -0.01, -0.3)
    'a min_logprob_drop of -0.010 nats (at or below 0) passes whatever the ablation does'
    """
    logprob = metric_of(kind) == "logprob"
    if kind.startswith("min"):
        if value <= 1e-12:
            return (f"a {kind} of {drop_text(kind, value)} (at or below 0) passes whatever "
                    f"the ablation does")
        if not logprob and value < floor - 1e-12:
            return (f"a {kind} of {drop_text(kind, value)} is below the record floor of "
                    f"{drop_text(kind, floor)}")
        return None
    if logprob:  # a log-probability can always fall further: only no bound allows all
        return None if math.isfinite(value) else (
            f"a {kind} of {value} allows every drop: the interval is unbounded (one example)")
    most = 1.0 if "relative" in kind else baseline  # no drop exceeds the baseline accuracy
    if value >= most - 1e-12:
        return (f"a {kind} of {drop_text(kind, value)} allows every drop: the baseline "
                f"accuracy is {baseline * 100:.1f}%")
    return None


#: The share of the measured effect a recorded ``min_*`` bound must keep (the default of
#: ``--unitablate-record-min-share``).
DEFAULT_MIN_SHARE = 0.5


def weak_threshold(kind: str, value: float, m: Measurement, share: float = DEFAULT_MIN_SHARE
                   ) -> str | None:
    """Why ``value``, written as the ``min_*`` threshold ``kind`` for the measurement
    ``m``, would guard too little of the effect, or ``None``.

    A guard is weak when it keeps less than ``share`` of the measured effect (the interval
    is too wide for the examples there are: a retrain could lose more than half of the
    effect and still pass), or, for an accuracy drop, when a single example flipping to
    wrong would meet it. ``max_*`` thresholds are never weak in this sense.

    >>> m = Measurement.from_correct([True] * 58, [True] * 52 + [False] * 6)
    >>> print(weak_threshold("min_drop", 0.016, m).replace(", and", ",\\n   and"))
    a min_drop of 1.6 pp keeps 15% of the measured drop of 10.3 pp (less than 50%),
       and one example of 58 (1.7 pp) meets it
    >>> weak_threshold("min_drop", 0.09, m) is None
    True
    """
    if not kind.startswith("min") or share <= 0:
        return None
    effect = m.value(kind)
    if not math.isfinite(effect) or effect <= 0:
        return None  # vacuous_threshold speaks for no effect at all
    parts = []
    if value < share * effect - 1e-12:
        kept = math.floor(100 * value / effect + 1e-9)  # floored: never "50% (less than 50%)"
        parts.append(f"keeps {kept}% of the measured {_what(kind)} of "
                     f"{drop_text(kind, effect)} (less than {share:.0%})")
    if metric_of(kind) == "accuracy":
        one = 1.0 / m.n / (m.baseline if "relative" in kind else 1.0)
        if value <= one + 1e-12:
            parts.append(f"one example of {m.n} ({drop_text(kind, one)}) meets it")
    if not parts:
        return None
    return f"a {kind} of {drop_text(kind, value)} " + ", and ".join(parts)


def _what(kind: str) -> str:
    return "relative drop" if "relative" in kind else "drop"


def examples_needed(m: Measurement, kind: str, share: float = DEFAULT_MIN_SHARE) -> int | None:
    """About how many examples of the target would make the recorded bound of ``kind``
    keep ``share`` of the effect ``m`` measured (and, for accuracy, more than one example's
    worth): the interval's half-width shrinks as ``1 / sqrt(n)``. ``None`` without an effect.

    >>> m = Measurement.from_correct([True] * 58, [True] * 52 + [False] * 6)
    >>> examples_needed(m, "min_drop")
    150
    """
    effect = m.value(kind)
    if not math.isfinite(effect) or effect <= 0 or share >= 1:
        return None
    lo = m.bound(kind, m.ci_level)
    half = effect - lo
    if not math.isfinite(half):
        return None
    needed = float(m.n) if half <= 0 else m.n * (half / ((1.0 - share) * effect)) ** 2
    if metric_of(kind) == "accuracy":
        scale = m.baseline if "relative" in kind else 1.0
        needed = max(needed, 1.0 / (share * effect * scale))
    return max(m.n, math.ceil(needed))


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
