"""Layer-wide judgement and top-k ranking: properties against a brute-force reading of the
definitions (torch-free)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_unitablate.spec.model import CONSTRAINT_KINDS, Constraint
from pytest_unitablate.verdicts.layerwide import (
    class_drops,
    judge_any_unit,
    judge_every_unit,
    rank_top_units,
    ranking_note,
)
from pytest_unitablate.verdicts.measure import Measurement, judge

N = 12


@st.composite
def layers(draw: st.DrawFn) -> tuple[list[bool], list[Measurement]]:
    """A baseline of N examples (at least one right) and 1..8 units' ablated correctness."""
    base = draw(st.lists(st.booleans(), min_size=N, max_size=N).filter(any))
    n_units = draw(st.integers(1, 8))
    per_unit = [
        Measurement.from_correct(base, draw(st.lists(st.booleans(), min_size=N, max_size=N)),
                                 units=(u,))
        for u in range(n_units)
    ]
    return base, per_unit


constraints = st.builds(
    Constraint,
    kind=st.sampled_from(CONSTRAINT_KINDS),
    threshold=st.sampled_from([-0.2, 0.0, 0.1, 0.25, 0.5]),
    confidence=st.sampled_from([None, None, 0.8, 0.95]),
)


@settings(max_examples=400, deadline=None)
@given(layers(), constraints, st.integers(1, 4))
def test_any_unit_passes_iff_enough_units_pass_alone(
    layer: tuple[list[bool], list[Measurement]], c: Constraint, at_least: int
) -> None:
    _, per_unit = layer
    v = judge_any_unit(c, per_unit, at_least=at_least)
    passing = [m.units[0] for m in per_unit if judge(c, m).passed]
    enough = len(passing) >= min(at_least, len(per_unit))
    assert judge(c, v.decider).passed == enough
    assert len(v.deciding) == min(at_least, len(per_unit))
    assert v.deciding[-1] == v.decider.units[0]
    if enough:
        assert set(v.deciding) <= set(passing)


@settings(max_examples=400, deadline=None)
@given(layers(), constraints)
def test_every_unit_passes_iff_every_unit_passes_alone(
    layer: tuple[list[bool], list[Measurement]], c: Constraint
) -> None:
    _, per_unit = layer
    v = judge_every_unit(c, per_unit)
    failing = [m.units[0] for m in per_unit if not judge(c, m).passed]
    assert judge(c, v.decider).passed == (not failing)
    if failing:
        assert v.deciding == [min(failing, key=lambda u: (_score(c, per_unit[u]), u))]
        assert f"{len(failing)} of {len(per_unit)} units miss it" in v.notes[0]


def _score(c: Constraint, m: Measurement) -> float:
    """What the constraint judges, oriented so that smaller is worse."""
    observed = judge(c, m).observed
    return observed if c.kind.startswith("min") else -observed


def test_record_value_is_the_bound_of_the_deciding_rank() -> None:
    base = [True] * 10
    strong = Measurement.from_correct(base, [False] * 8 + [True] * 2, units=(0,))
    weak = Measurement.from_correct(base, [False] * 2 + [True] * 8, units=(1,))
    c = Constraint("min_drop", 0.1)
    assert judge_any_unit(c, [weak, strong], at_least=1).record_value == strong.bound(
        "min_drop", 0.95)
    assert judge_any_unit(c, [weak, strong], at_least=2).record_value == weak.bound(
        "min_drop", 0.95)
    assert judge_every_unit(c, [weak, strong]).record_value == weak.bound("min_drop", 0.95)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 500), st.sampled_from([0.0, 0.1, 0.2, 0.5])),
                min_size=1, max_size=30, unique_by=lambda t: t[0]),
       st.integers(1, 10))
def test_top_units_are_the_k_largest_drops_ties_to_the_lower_index(
    pairs: list[tuple[int, float]], k: int
) -> None:
    units = [u for u, _ in pairs]
    drops = [d for _, d in pairs]
    chosen = rank_top_units(units, drops, k)
    assert chosen == sorted(chosen) and len(chosen) == min(k, len(units))
    rest = [p for p in pairs if p[0] not in chosen]
    for u in chosen:
        d = dict(pairs)[u]
        # nothing left out beats a chosen unit, and an equal one has a higher index
        assert all(o < d or (o == d and v > u) for v, o in rest)


def test_class_drops_from_correctness() -> None:
    assert class_drops([True, True, False, False], [[False, True, False, False],
                                                     [True, True, True, False]]) == [0.25, -0.25]
    assert class_drops([], [[], []]) == [0.0, 0.0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.1, 0.2]), min_size=1, max_size=12), st.integers(1, 12))
def test_the_ranking_note_appears_exactly_when_the_drops_cannot_decide(
    drops: list[float], k: int
) -> None:
    units = list(range(len(drops)))
    note = ranking_note(units, drops, k, "seven")
    ranked = sorted(drops, reverse=True)
    kk = min(k, len(drops))
    all_zero = ranked[0] <= 0
    tie = kk < len(ranked) and ranked[kk - 1] == ranked[kk]
    assert (note is not None) == (all_zero or tie)
    if all_zero:
        assert note is not None and "by index alone" in note
    elif tie:
        assert note is not None and "tie at the cut" in note


def test_notes_after_an_early_stop_say_the_units_were_those_evaluated() -> None:
    base = [True] * 10
    hit = Measurement.from_correct(base, [False] * 10, units=(4,))
    every = judge_every_unit(Constraint("max_drop", 0.1), [hit], total=12)
    assert every.notes == ["1 of 1 units evaluated miss it: [4]"]
    assert judge_every_unit(Constraint("max_drop", 0.1), [hit], total=1).notes == [
        "1 of 1 units miss it: [4]"]
    some = judge_any_unit(Constraint("min_drop", 0.5), [hit], at_least=1, total=12)
    assert some.notes == ["1 of 1 units evaluated meet it; at least 1 needed"]
