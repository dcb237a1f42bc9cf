"""Judging layer-wide checks and ranking units (torch-free, pure Python).

A layer-wide check looks at every unit of a layer ablated alone:

* ``any_unit`` passes when at least ``at_least`` units meet the constraint; the deciding unit
  is the ``at_least``-th best one;
* ``every_unit`` passes when every unit meets it; the deciding unit is the worst one;
* ``top_units: k`` ablates the ``k`` units whose single-unit ablation hurts a class most,
  together (:func:`rank_top_units` chooses them).

Units are ranked by what the constraint judges (the point estimate, or the interval bound
when it sets ``confidence``); ties are broken by the lower unit index, so the outcome never
depends on evaluation order.

Example::

    >>> from pytest_unitablate.spec.model import Constraint
    >>> base = [True] * 10
    >>> per_unit = [Measurement.from_correct(base, [True] * 10, units=(0,)),
    ...             Measurement.from_correct(base, [False] * 5 + [True] * 5, units=(1,))]
    >>> v = judge_any_unit(Constraint("min_drop", 0.3), per_unit, at_least=1)
    >>> v.deciding, round(v.decider.drop, 2)
    ([1], 0.5)
    >>> judge_every_unit(Constraint("min_drop", 0.3), per_unit).deciding
    [0]
    >>> rank_top_units([4, 5, 6], [0.1, 0.3, 0.3], k=2)
    [5, 6]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pytest_unitablate.spec.model import Constraint
from pytest_unitablate.verdicts.measure import DEFAULT_LEVEL, Measurement, judge


@dataclass(frozen=True)
class LayerVerdict:
    """What a layer-wide check comes down to.

    ``decider`` is the measurement the constraint is judged on, ``deciding`` the unit(s)
    behind it, ``record_value`` the interval bound record mode would write, and ``notes``
    lines for the failure text (how many units meet the constraint, which miss it).
    """

    decider: Measurement
    deciding: list[int]
    record_value: float
    notes: list[str] = field(default_factory=list)


def _badness(constraint: Constraint, m: Measurement) -> float:
    """How badly ``m`` does on what the constraint judges (lower is better; NaN is worst).

    Units are ranked by exactly what :func:`judge` compares with the threshold: the point
    estimate, or the interval bound when the constraint sets ``confidence``. Ranking by the
    point estimate and judging by the bound could pick a decider that fails while another
    unit passes.
    """
    kind = constraint.kind
    observed = m.bound(kind, constraint.confidence) if constraint.confidence else m.value(kind)
    if math.isnan(observed):
        return math.inf
    return -observed if kind.startswith("min") else observed


def _sign(kind: str) -> float:
    """+1 when a larger bound is better for the constraint (``min_*``), else -1."""
    return 1.0 if kind.startswith("min") else -1.0


def _unit(m: Measurement) -> int:
    return m.units[0]


def _of(per_unit: Sequence[Measurement], total: int | None, noun: str = "unit") -> str:
    """``"3 of 8 units"``, or ``"1 of 1 units evaluated"`` when a check stopped early
    (``total``: the layer's units; ``noun``: ``unit`` or ``head``)."""
    partial = total is not None and total > len(per_unit)
    return f"of {len(per_unit)} {noun}s{' evaluated' if partial else ''}"


def judge_any_unit(constraint: Constraint, per_unit: Sequence[Measurement], *, at_least: int,
                   level: float = DEFAULT_LEVEL, total: int | None = None,
                   noun: str = "unit") -> LayerVerdict:
    """``any_unit``: the ``at_least``-th best unit decides (best first, ties by index).
    ``total``: the layer's units, when ``per_unit`` holds only those evaluated."""
    if not per_unit:
        raise ValueError("a layer-wide check needs at least one unit")
    kind, sign = constraint.kind, _sign(constraint.kind)
    ranked = sorted(per_unit, key=lambda m: (_badness(constraint, m), m.units))
    bounds = sorted((m.bound(kind, level) for m in per_unit), key=lambda b: -sign * b)
    k = min(at_least, len(ranked))
    notes = []
    if constraint.threshold is not None:
        passing = sum(judge(constraint, m).passed for m in per_unit)
        notes.append(f"{passing} {_of(per_unit, total, noun)} meet it; at least {at_least} "
                     f"needed")
    return LayerVerdict(decider=ranked[k - 1], deciding=[_unit(m) for m in ranked[:k]],
                        record_value=bounds[k - 1], notes=notes)


def judge_every_unit(constraint: Constraint, per_unit: Sequence[Measurement], *,
                     level: float = DEFAULT_LEVEL, total: int | None = None,
                     noun: str = "unit") -> LayerVerdict:
    """``every_unit``: the worst unit decides (ties by index); ``total`` as for
    :func:`judge_any_unit`."""
    if not per_unit:
        raise ValueError("a layer-wide check needs at least one unit")
    kind, sign = constraint.kind, _sign(constraint.kind)
    worst = max(per_unit, key=lambda m: (_badness(constraint, m), -m.units[0]))
    bounds = sorted((m.bound(kind, level) for m in per_unit), key=lambda b: -sign * b)
    notes = []
    if constraint.threshold is not None:
        failing = [_unit(m) for m in per_unit if not judge(constraint, m).passed]
        shown = f": {failing[:20]}{' ...' if len(failing) > 20 else ''}" if failing else ""
        notes.append(f"{len(failing)} {_of(per_unit, total, noun)} miss it{shown}")
    return LayerVerdict(decider=worst, deciding=[_unit(worst)], record_value=bounds[-1],
                        notes=notes)


def decided_early(constraint: Constraint, per_unit: Sequence[Measurement], *, mode: str,
                  at_least: int = 1) -> bool:
    """Whether the units measured so far fix the outcome, whatever the others would do.

    ``any_unit`` is decided (it passes) once ``at_least`` units meet the constraint;
    ``every_unit`` (it fails) at the first unit that misses it. Nothing else can be decided
    before every unit is measured; neither can a constraint without a threshold.

    >>> from pytest_unitablate.spec.model import Constraint
    >>> base = [True] * 10
    >>> hit = Measurement.from_correct(base, [False] * 10, units=(3,))
    >>> decided_early(Constraint("min_drop", 0.5), [hit], mode="any_unit")
    True
    >>> decided_early(Constraint("min_drop", 0.5), [hit], mode="any_unit", at_least=2)
    False
    >>> decided_early(Constraint("max_drop", 0.5), [hit], mode="every_unit")
    True
    """
    if constraint.threshold is None or not per_unit:
        return False
    passing = sum(judge(constraint, m).passed for m in per_unit)
    if mode == "any_unit":
        return passing >= at_least
    if mode == "every_unit":
        return passing < len(per_unit)
    raise ValueError(f"no early decision for mode {mode!r}")


def damaging_first(constraint: Constraint, mode: str) -> bool:
    """Which end of the estimated-damage order decides early: the most damaging units
    first when a passing ``any_unit`` needs big drops (``min_*``) or a failing
    ``every_unit`` is a big drop (``max_*``); the least damaging first otherwise.

    >>> from pytest_unitablate.spec.model import Constraint
    >>> damaging_first(Constraint("min_drop", 0.2), "any_unit")
    True
    >>> damaging_first(Constraint("min_drop", 0.2), "every_unit")
    False
    """
    wants_big = constraint.kind.startswith("min")
    return wants_big if mode == "any_unit" else not wants_big


def class_drops(baseline: Sequence[object], per_unit: Iterable[Sequence[object]]
                ) -> list[float]:
    """Accuracy drop of one class for each unit, from per-example correctness.

    ``baseline`` and each entry of ``per_unit`` hold the correctness of the class's
    examples (anything ``bool()`` accepts, e.g. a numpy bool array). A class with no
    examples has no drop: every unit gets 0.0.

    >>> class_drops([True, True, False], [[True, False, False], [True, True, False]])
    [0.3333333333333333, 0.0]
    """
    n = len(baseline)
    if n == 0:
        return [0.0 for _ in per_unit]
    base = sum(bool(x) for x in baseline) / n
    return [base - sum(bool(x) for x in after) / n for after in per_unit]


def rank_top_units(units: Sequence[int], drops: Sequence[float], k: int) -> list[int]:
    """The ``k`` units with the largest drops, in ascending unit order (ties: lower index)."""
    if len(units) != len(drops):
        raise ValueError(f"{len(units)} units but {len(drops)} drops")
    order = sorted(range(len(units)), key=lambda i: (-drops[i], units[i]))
    return sorted(units[i] for i in order[:k])


def ranking_note(units: Sequence[int], drops: Sequence[float], k: int, target: str
                 ) -> str | None:
    """What :func:`rank_top_units` could not decide from the drops, in words (or ``None``).

    The ranking is degenerate when no unit hurts the class at all (every drop <= 0: the
    choice is by index alone) or when units tie at the cut (the k-th and the (k+1)-th drop
    are equal: the lower indices are taken).

    >>> print(ranking_note([0, 1, 2], [0.0, 0.0, 0.0], 2, "seven")[:59])
    no single unit lowers seven on the ranking data (every drop
    >>> print(ranking_note([0, 1, 2, 3], [0.5, 0.2, 0.2, 0.1], 2, "seven")[:62])
    units tie at the cut: 2 units share the 2nd largest drop (20.0
    >>> ranking_note([0, 1, 2], [0.5, 0.2, 0.1], 2, "seven") is None
    True
    """
    if not units or k <= 0:
        return None
    k = min(k, len(units))
    ranked = sorted(drops, reverse=True)
    if ranked[0] <= 1e-12:
        return (f"no single unit lowers {target} on the ranking data (every drop <= 0): "
                f"the choice of {k} unit(s) is by index alone")
    if k < len(ranked) and abs(ranked[k - 1] - ranked[k]) <= 1e-12:
        cut = ranked[k - 1]
        tied = sum(abs(d - cut) <= 1e-12 for d in drops)
        fit = sum(abs(d - cut) <= 1e-12 for d in ranked[:k])
        nth = {1: "st", 2: "nd", 3: "rd"}.get(k if k < 20 else k % 10, "th")
        return (f"units tie at the cut: {tied} units share the {k}{nth} largest drop "
                f"({cut * 100:.1f} pp) and only {fit} fit; the lower indices were taken")
    return None


__all__ = ["LayerVerdict", "class_drops", "damaging_first", "decided_early",
           "judge_any_unit", "judge_every_unit", "rank_top_units", "ranking_note"]
