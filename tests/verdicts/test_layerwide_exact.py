"""Layer-wide judgement, exactly: the record value each mode writes, the notes' words, the
ranking note's cases, and the errors (each assertion kills a mutant the others left)."""

from __future__ import annotations

import math

import pytest

from pytest_unitablate.spec.model import Constraint
from pytest_unitablate.verdicts.layerwide import (
    class_drops,
    decided_early,
    judge_any_unit,
    judge_every_unit,
    rank_top_units,
    ranking_note,
)
from pytest_unitablate.verdicts.measure import Measurement

BASE = [True] * 20


def _unit(u: int, wrong: int) -> Measurement:
    """Unit ``u`` whose ablation makes ``wrong`` of 20 right examples wrong."""
    return Measurement.from_correct(BASE, [False] * wrong + [True] * (20 - wrong), units=(u,))


UNITS = [_unit(0, 2), _unit(1, 10), _unit(2, 6)]


def test_every_unit_max_drop_writes_the_largest_upper_bound_and_names_the_worst() -> None:
    v = judge_every_unit(Constraint("max_drop", 0.4), UNITS)
    assert v.deciding == [1]
    assert v.record_value == pytest.approx(max(m.ci[1] for m in UNITS))
    assert v.notes == ["1 of 3 units miss it: [1]"]
    heads = judge_every_unit(Constraint("max_drop", 0.4), UNITS, total=8, noun="head")
    assert heads.notes == ["1 of 3 heads evaluated miss it: [1]"]


def test_every_unit_min_drop_writes_the_smallest_lower_bound() -> None:
    v = judge_every_unit(Constraint("min_drop", 0.05), UNITS)
    assert v.deciding == [0]
    assert v.record_value == pytest.approx(min(m.ci[0] for m in UNITS))
    assert v.notes == ["0 of 3 units miss it"]


def test_every_unit_lists_twenty_failing_units_then_dots() -> None:
    many = [_unit(u, 10) for u in range(25)]
    (note,) = judge_every_unit(Constraint("max_drop", 0.1), many).notes
    assert note == f"25 of 25 units miss it: {list(range(20))} ..."
    (few,) = judge_every_unit(Constraint("max_drop", 0.1), many[:20]).notes
    assert few == f"20 of 20 units miss it: {list(range(20))}"
    (one_more,) = judge_every_unit(Constraint("max_drop", 0.1), many[:21]).notes
    assert one_more == f"21 of 21 units miss it: {list(range(20))} ..."


def test_any_unit_writes_the_at_least_th_best_bound() -> None:
    v = judge_any_unit(Constraint("min_drop", 0.2), UNITS, at_least=2)
    assert v.deciding == [1, 2]
    assert v.decider.units == (2,)
    lows = sorted((m.ci[0] for m in UNITS), reverse=True)
    assert v.record_value == pytest.approx(lows[1])
    assert v.notes == ["2 of 3 units meet it; at least 2 needed"]
    partial = judge_any_unit(Constraint("min_drop", 0.2), UNITS, at_least=1, total=16,
                             noun="head")
    assert partial.notes == ["2 of 3 heads evaluated meet it; at least 1 needed"]
    upper = judge_any_unit(Constraint("max_drop", 0.2), UNITS, at_least=2)
    highs = sorted(m.ci[1] for m in UNITS)
    assert upper.deciding == [0, 2] and upper.record_value == pytest.approx(highs[1])
    assert judge_any_unit(Constraint("min_drop", None), UNITS, at_least=1).notes == []


def test_a_nan_unit_ranks_worst_and_confidence_ranks_by_the_bound() -> None:
    nan = Measurement.from_correct([False] * 4, [False] * 4, units=(9,))  # baseline 0
    v = judge_any_unit(Constraint("min_relative_drop", 0.1), [nan, UNITS[0]], at_least=1)
    assert v.deciding == [0]
    wide = Measurement.from_correct(BASE[:4], [False, False, True, True], units=(5,))
    narrow = _unit(6, 8)  # 40 pp on 20 examples: a tighter lower bound than 50 pp on 4
    by_bound = judge_any_unit(Constraint("min_drop", 0.1, confidence=0.95), [wide, narrow],
                              at_least=1)
    assert by_bound.deciding == [6]
    by_point = judge_any_unit(Constraint("min_drop", 0.1), [wide, narrow], at_least=1)
    assert by_point.deciding == [5]


def test_empty_layers_and_unknown_modes_are_refused_with_words() -> None:
    with pytest.raises(ValueError, match=r"^a layer-wide check needs at least one unit$"):
        judge_any_unit(Constraint("min_drop", 0.1), [], at_least=1)
    with pytest.raises(ValueError, match=r"^a layer-wide check needs at least one unit$"):
        judge_every_unit(Constraint("min_drop", 0.1), [])
    with pytest.raises(ValueError, match="no early decision for mode 'top_units'"):
        decided_early(Constraint("min_drop", 0.1), UNITS, mode="top_units")
    with pytest.raises(ValueError, match="3 units but 2 drops"):
        rank_top_units([1, 2, 3], [0.1, 0.2], k=1)


def test_early_decisions() -> None:
    hit = [_unit(4, 20)]
    assert decided_early(Constraint("min_drop", 0.5), hit, mode="any_unit")  # at_least 1
    assert not decided_early(Constraint("min_drop", 0.5), hit, mode="any_unit", at_least=2)
    assert not decided_early(Constraint("min_drop", None), hit, mode="any_unit")
    assert not decided_early(Constraint("min_drop", 0.5), [], mode="any_unit")
    assert decided_early(Constraint("max_drop", 0.5), hit, mode="every_unit")
    assert not decided_early(Constraint("max_drop", 0.5), [_unit(1, 1)], mode="every_unit")


def test_ranking_notes_in_every_case() -> None:
    assert ranking_note([], [], 2, "seven") is None
    assert ranking_note([0, 1], [0.2, 0.1], 0, "seven") is None
    assert ranking_note([0, 1], [0.2, 0.2], 0, "seven") is None
    assert ranking_note([0, 1, 2], [0.0, -0.1, 0.0], 5, "seven") == (
        "no single unit lowers seven on the ranking data (every drop <= 0): the choice "
        "of 3 unit(s) is by index alone")
    assert ranking_note([0, 1], [1e-12, 0.0], 1, "two") is not None  # float noise is 0
    assert ranking_note([0, 1, 2, 3], [0.5, 0.2, 0.2, 0.1], 2, "seven") == (
        "units tie at the cut: 2 units share the 2nd largest drop (20.0 pp) and only 1 "
        "fit; the lower indices were taken")
    assert "the 1st largest drop (50.0 pp) and only 1 fit" in str(
        ranking_note([0, 1], [0.5, 0.5], 1, "x"))
    assert "3 units share the 3rd largest drop (30.0 pp) and only 1 fit" in str(
        ranking_note([0, 1, 2, 3, 4], [0.5, 0.4, 0.3, 0.3, 0.3], 3, "x"))
    assert "the 4th largest" in str(ranking_note(list(range(5)), [0.9, 0.8, 0.7, 0.1, 0.1],
                                                 4, "x"))
    eleven = [1.0 - 0.01 * i for i in range(10)] + [0.5, 0.5]
    assert "the 11th largest" in str(ranking_note(list(range(12)), eleven, 11, "x"))
    twenty_one = [1.0 - 0.01 * i for i in range(20)] + [0.1, 0.1]
    assert "the 21st largest" in str(ranking_note(list(range(22)), twenty_one, 21, "x"))
    twenty_two = [1.0 - 0.01 * i for i in range(21)] + [0.1, 0.1]
    assert "the 22nd largest" in str(ranking_note(list(range(23)), twenty_two, 22, "x"))
    assert ranking_note([0, 1, 2], [0.5, 0.2, 0.1], 2, "seven") is None
    assert ranking_note([0, 1], [0.5, 0.2], 5, "seven") is None  # k beyond the layer


def test_rank_and_class_drops() -> None:
    assert rank_top_units([7, 3, 5], [0.1, 0.3, 0.3], k=2) == [3, 5]
    assert rank_top_units([7, 3, 5], [0.4, 0.3, 0.3], k=2) == [3, 7]
    assert class_drops([], [[], []]) == [0.0, 0.0]
    assert class_drops([True, False], [[False, False]]) == [0.5]
    assert math.isclose(class_drops([True, True, True], [[True, False, True]])[0], 1 / 3)
