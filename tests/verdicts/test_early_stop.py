"""Stopping a layer-wide check early never changes its outcome (property test over per-unit
results, thresholds, modes and evaluation orders, with the plugin's doubling chunks)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_unitablate.spec.model import Constraint
from pytest_unitablate.verdicts.layerwide import (
    damaging_first,
    decided_early,
    judge_any_unit,
    judge_every_unit,
)
from pytest_unitablate.verdicts.measure import Measurement, judge


def _outcome(constraint: Constraint, per_unit: list[Measurement], mode: str,
             at_least: int) -> bool:
    if mode == "any_unit":
        verdict = judge_any_unit(constraint, per_unit, at_least=at_least)
    else:
        verdict = judge_every_unit(constraint, per_unit)
    return judge(constraint, verdict.decider).passed


def _early(constraint: Constraint, per_unit: list[Measurement], order: list[int], mode: str,
           at_least: int, first: int) -> tuple[bool, int]:
    """What the plugin does: chunks of doubling size in ``order`` until decided."""
    done: list[Measurement] = []
    start, size = 0, first
    while start < len(order):
        done += [per_unit[u] for u in order[start:start + size]]
        if decided_early(constraint, done, mode=mode, at_least=at_least):
            break
        start, size = start + size, size * 2
    return _outcome(constraint, done, mode, at_least), len(done)


@st.composite
def layers(draw: Any) -> tuple[list[Measurement], Constraint, str, int, list[int], int]:
    n = draw(st.integers(5, 30))
    base = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    units = draw(st.integers(1, 40))
    per_unit = []
    for u in range(units):
        flips = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        after = [b and not f for b, f in zip(base, flips, strict=True)]
        per_unit.append(Measurement.from_correct(base, after, units=(u,)))
    kind = draw(st.sampled_from(["min_drop", "max_drop", "min_relative_drop",
                                 "max_relative_drop"]))
    confidence = draw(st.sampled_from([None, 0.9]))
    constraint = Constraint(kind, draw(st.floats(-0.2, 1.0)), confidence=confidence)
    mode = draw(st.sampled_from(["any_unit", "every_unit"]))
    order = draw(st.permutations(list(range(units))))
    return per_unit, constraint, mode, draw(st.integers(1, 4)), order, draw(st.integers(1, 8))


@settings(max_examples=300, deadline=None)
@given(layers())
def test_early_outcome_equals_the_full_sweep(case: Any) -> None:
    per_unit, constraint, mode, at_least, order, first = case
    early, evaluated = _early(constraint, per_unit, order, mode, at_least, first)
    assert early == _outcome(constraint, per_unit, mode, at_least)
    if evaluated < len(per_unit):  # stopped: only the outcomes that can be known early
        assert early == (mode == "any_unit")


def test_the_order_end_that_decides_early() -> None:
    assert damaging_first(Constraint("min_drop", 0.2), "any_unit")
    assert damaging_first(Constraint("max_drop", 0.2), "every_unit")
    assert not damaging_first(Constraint("max_relative_drop", 0.2), "any_unit")
    assert not damaging_first(Constraint("min_relative_drop", 0.2), "every_unit")
