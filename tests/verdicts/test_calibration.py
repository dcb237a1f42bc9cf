"""Calibrated thresholds and the calibration file (torch-free): the rule's properties, the
unguardable refusal, and the file's round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_unitablate.spec.rewrite import rounded_threshold
from pytest_unitablate.verdicts.calibration import (
    MIN_SHARE,
    CalibrationFile,
    CalibrationFileError,
    Point,
    calibrated_threshold,
    calibration_path,
    definition_of,
    group_of,
    unguardable_reason,
)

fraction = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def points(draw: st.DrawFn) -> list[Point]:
    """2..6 models' measurements: a value and a sampling bound on its safe side."""
    out = []
    for _ in range(draw(st.integers(2, 6))):
        value = draw(fraction)
        half = draw(st.floats(0.0, 0.3))
        out.append(Point(value, value - half, (value - half, value + half), 60, 0.98))
    return out


@given(points(), st.sampled_from(["min_drop", "min_logprob_drop", "min_relative_drop"]))
def test_a_min_threshold_lies_below_every_reference(ps: list[Point], kind: str) -> None:
    found = calibrated_threshold(kind, ps)
    assert found.threshold <= min(p.bound for p in ps) + 1e-12
    # every reference passes its own calibrated guard
    assert all(p.value >= found.threshold - 1e-12 for p in ps)
    assert found.low == min(p.value for p in ps) and found.high == max(p.value for p in ps)


@given(points())
def test_a_max_threshold_lies_above_every_reference_by_twice_the_range(ps: list[Point]) -> None:
    upper = [Point(p.value, 2 * p.value - p.bound) for p in ps]  # bounds above the values
    found = calibrated_threshold("max_drop", upper)
    spread = max(p.value for p in ps) - min(p.value for p in ps)
    assert found.threshold == pytest.approx(max(p.bound for p in upper) + 2 * spread)


@given(points(), st.floats(0.0, 3.0), st.floats(0.0, 3.0))
def test_a_wider_rule_never_raises_a_min_threshold(ps: list[Point], a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert calibrated_threshold("min_drop", ps, widen=hi).threshold <= \
        calibrated_threshold("min_drop", ps, widen=lo).threshold + 1e-12


def test_references_that_agree_keep_their_lowest_bound() -> None:
    same = [Point(0.4, 0.3), Point(0.4, 0.32), Point(0.4, 0.35)]
    assert calibrated_threshold("min_drop", same).threshold == pytest.approx(0.3)


def test_a_reference_without_the_effect_makes_the_item_unguardable() -> None:
    ps = [Point(0.0, -0.05, n=60, baseline=1.0), Point(0.8, 0.7, n=60, baseline=1.0),
          Point(0.9, 0.8, n=60, baseline=1.0)]
    found = calibrated_threshold("min_drop", ps)
    assert found.threshold <= 0
    assert "passes whatever the ablation does" in str(unguardable_reason("min_drop", found))


def test_a_threshold_one_example_meets_is_unguardable() -> None:
    ps = [Point(0.05, 0.015, n=60, baseline=1.0)] * 3
    found = calibrated_threshold("min_drop", ps)
    assert "one example of 60" in str(unguardable_reason("min_drop", found))
    # the same effect in nats is not judged by examples
    assert unguardable_reason("min_logprob_drop", calibrated_threshold(
        "min_logprob_drop", ps)) is None


def test_a_threshold_below_a_quarter_of_the_weakest_reference_is_unguardable() -> None:
    # log-prob drops of 0.3 to 1.8 nats: the ratio squared leaves 0.6% of the weakest
    ps = [Point(0.3, 0.25, n=60), Point(1.8, 1.6, n=60), Point(1.0, 0.9, n=60)]
    found = calibrated_threshold("min_logprob_drop", ps)
    written = rounded_threshold("min_logprob_drop", found.threshold)
    assert 0 < written < MIN_SHARE * 0.3
    reason = unguardable_reason("min_logprob_drop", found)
    assert reason is not None and "of the smallest effect the models showed" in reason
    close = [Point(0.9, 0.8, n=60), Point(1.2, 1.1, n=60), Point(1.0, 0.9, n=60)]
    assert unguardable_reason("min_logprob_drop",
                              calibrated_threshold("min_logprob_drop", close)) is None


def test_a_max_threshold_that_allows_every_drop_is_unguardable() -> None:
    ps = [Point(0.1, 0.3, n=60, baseline=0.9), Point(0.5, 0.7, n=60, baseline=0.9),
          Point(0.2, 0.4, n=60, baseline=0.95)]
    found = calibrated_threshold("max_drop", ps)
    assert "allows every drop" in str(unguardable_reason("max_drop", found))


def test_range_text_and_what_it_rests_on() -> None:
    found = calibrated_threshold("min_drop", [Point(0.6, 0.5), Point(0.95, 0.86),
                                              Point(0.8, 0.7)])
    assert found.rests_on() == "over 3 models: measured 60.0-95.0 pp"
    nats = calibrated_threshold("min_logprob_drop", [Point(0.1234, 0.1), Point(0.5, 0.4)])
    assert nats.range_text() == "0.123-0.500 nats"
    acc = calibrated_threshold("min_accuracy", [Point(0.9, 0.85), Point(0.95, 0.9)])
    assert acc.range_text() == "90.0-95.0%"


def test_the_file_keeps_one_point_per_model_and_round_trips(tmp_path: object) -> None:
    f = CalibrationFile()
    item, definition = "conv5-any-seven-min_drop", definition_of(
        {"layer": "conv5", "mode": "any_unit", "target": "seven", "constraint": "min_drop"})
    f.add("a" * 64, item, definition, "min_drop", Point(0.3, 0.2, (0.2, 0.4), 60, 0.98),
          {"torch_version": "2.14"})
    again = Point(0.31, 0.21, (0.21, 0.41), 60, 0.98)
    f.add("a" * 64, item, definition, "min_drop", again)  # the same model again
    f.add("b" * 64, item, definition, "min_drop", Point(0.5, 0.4))  # unknowns: null
    assert [p.value for p in f.points(item, definition)] == [0.31, 0.5]
    assert [p.value for p in f.points(item, definition, leave_out="b" * 64)] == [0.31]
    back = CalibrationFile.from_text(f.to_text(), "x.json")
    assert back.points(item, definition) == f.points(item, definition)
    assert back.models == {"a" * 64: {"torch_version": "2.14"}, "b" * 64: {}}
    data = json.loads(f.to_text())
    assert data["unitablate_calibration"] == 1 and data["rule"]["min_models"] == 3
    # another definition under the same id (the check now ablates another layer) restarts
    other = definition.replace("conv5", "conv4")
    assert f.points(item, other) == []
    f.add("c" * 64, item, other, "min_drop", Point(0.1, 0.05))
    assert f.points(item, definition) == [] and len(f.points(item, other)) == 1


def test_a_broken_file_is_named_with_what_to_do() -> None:
    with pytest.raises(CalibrationFileError, match=r"x\.json: .*delete it and calibrate"):
        CalibrationFile.from_text("{\"unitablate_calibration\": 1, \"items\": {\"a\": 3}}",
                                  "x.json")
    with pytest.raises(CalibrationFileError, match="format 1"):
        CalibrationFile.from_text("[]", "x.json")


def test_the_file_text_is_stable_whatever_order_models_were_added() -> None:
    """One key per line, sorted: a reviewer's diff shows the model that was added."""
    first, second = CalibrationFile(), CalibrationFile()
    adds = [("b" * 4, "item-z", Point(0.5, 0.4)), ("a" * 4, "item-z", Point(0.3, 0.2)),
            ("a" * 4, "item-a", Point(0.1, 0.05, (0.0, 0.2), 7, 0.9))]
    for sha, item, point in adds:
        first.add(sha, item, "{}", "min_drop", point, {"torch_version": "2.14"})
    for sha, item, point in reversed(adds):
        second.add(sha, item, "{}", "min_drop", point, {"torch_version": "2.14"})
    assert first.to_text() == second.to_text() == """\
{
 "items": {
  "item-a": {
   "constraint": "min_drop",
   "definition": "{}",
   "points": {
    "aaaa": {
     "baseline": 0.9,
     "bound": 0.05,
     "ci_high": 0.2,
     "ci_low": 0.0,
     "n": 7,
     "value": 0.1
    }
   }
  },
  "item-z": {
   "constraint": "min_drop",
   "definition": "{}",
   "points": {
    "aaaa": {
     "baseline": null,
     "bound": 0.2,
     "ci_high": null,
     "ci_low": null,
     "n": 0,
     "value": 0.3
    },
    "bbbb": {
     "baseline": null,
     "bound": 0.4,
     "ci_high": null,
     "ci_low": null,
     "n": 0,
     "value": 0.5
    }
   }
  }
 },
 "models": {
  "aaaa": {
   "torch_version": "2.14"
  },
  "bbbb": {
   "torch_version": "2.14"
  }
 },
 "rule": {
  "min_models": 3,
  "name": "widened envelope",
  "widen": 2.0
 },
 "unitablate_calibration": 1
}
"""


def test_a_point_that_is_not_a_number_is_not_written() -> None:
    f = CalibrationFile()
    f.add("a" * 64, "item", "{}", "min_drop", Point(math.nan, 0.2))
    with pytest.raises(ValueError, match="not JSON compliant"):
        f.to_text()


def test_a_file_with_no_items_or_models_yet_reads_as_empty() -> None:
    empty = CalibrationFile.from_text('{"unitablate_calibration": 1}', "x.json")
    assert empty.items == {} and empty.models == {}


def test_the_threshold_needs_a_measurement() -> None:
    with pytest.raises(ValueError) as info:
        calibrated_threshold("min_drop", [])
    assert str(info.value) == "calibrated_threshold needs at least one model's measurement"


@pytest.mark.parametrize(("ratios", "pooled"), [
    ({"seven": 1.0, "two": 0.5, "three": 0.9}, 0.9),  # the middle one
    ({"seven": 1.0, "two": 0.5, "three": 0.7, "four": 0.9}, 0.8),  # the middle two's mean
])
def test_the_spread_pooled_over_a_group_is_its_median(ratios: dict[str, float],
                                                      pooled: float) -> None:
    """The item whose own models agree (ratio 1) is widened by the group's median ratio."""
    f = CalibrationFile()
    group = {"layer": "conv5", "mode": "any_unit", "constraint": "min_drop",
             "ablation": "zero"}
    for target, ratio in ratios.items():
        definition = definition_of({**group, "target": target})
        for sha, value in (("a", 0.4), ("b", 0.4 * ratio), ("c", 0.4)):
            f.add(sha * 64, target, definition, "min_drop", Point(value, value / 2))
    found = f.calibrated("seven", definition_of({**group, "target": "seven"}))
    assert found is not None
    assert found.threshold == pytest.approx(0.2 * pooled ** 2)


def test_items_that_differ_only_in_target_or_units_share_a_group() -> None:
    a = definition_of({"layer": "conv5", "mode": "units", "units": [3], "target": "seven",
                       "constraint": "min_drop", "ablation": "zero"})
    b = definition_of({"layer": "conv5", "mode": "units", "units": [4, 5], "target": "two",
                       "constraint": "min_drop", "ablation": "zero"})
    c = definition_of({"layer": "conv4", "mode": "units", "units": [3], "target": "seven",
                       "constraint": "min_drop", "ablation": "zero"})
    assert group_of(a) == group_of(b) != group_of(c)
    # whatever order the definition's keys come in
    assert group_of(json.dumps({"layer": "x", "ablation": "zero"})) == group_of(
        json.dumps({"ablation": "zero", "layer": "x"}))


def test_the_file_sits_beside_the_spec() -> None:
    assert calibration_path("specs/a.yaml").name == "a.yaml.calibration.json"
    assert not math.isnan(Point.from_json({"value": 1, "bound": 0.5}).bound)


def test_a_calibration_file_that_cannot_be_read_or_parsed_is_named(tmp_path: Path) -> None:
    from pytest_unitablate.verdicts.calibration import CalibrationFile, CalibrationFileError

    assert CalibrationFile.read(tmp_path / "none.json") == CalibrationFile()
    broken = tmp_path / "s.yaml.calibration.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(CalibrationFileError) as info:
        CalibrationFile.read(broken)
    assert str(info.value).startswith(f"{broken}: Expecting property name")
    assert str(info.value).endswith("; delete it and calibrate again")
    folder = tmp_path / "a folder.json"
    folder.mkdir()
    with pytest.raises(CalibrationFileError) as info:
        CalibrationFile.read(folder)
    assert str(info.value).startswith(f"{folder}: cannot be read (")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"unitablate_calibration": 1, "x": "\xe9"}')
    with pytest.raises(CalibrationFileError, match="cannot be read"):
        CalibrationFile.read(latin)


def test_a_definition_changes_with_every_field_that_changes_the_number() -> None:
    from pytest_unitablate.verdicts.calibration import definition_of

    base = {"layer": "conv5", "mode": "units", "unit": "channel", "channel_dim": 1,
            "units": [3], "ablation": "zero", "target": "seven", "constraint": "min_drop",
            "threshold": 0.2, "id": "a", "line": 4}
    first = definition_of(base)
    assert json.loads(first) == {k: base[k] for k in (
        "layer", "mode", "unit", "channel_dim", "units", "ablation", "target", "constraint")}
    # the keys sorted: the text a calibration file stores is the same for the same fields
    assert list(json.loads(first)) == sorted(json.loads(first))
    others = {"layer": "conv4", "mode": "any_unit", "unit": "head", "channel_dim": -1,
              "units": [4], "ablation": "mean", "target": "six", "constraint": "max_drop"}
    for key, value in others.items():
        assert definition_of({**base, key: value}) != first, key
    # what does not change the number does not change the definition
    assert definition_of({**base, "threshold": 0.5, "id": "b", "line": 9}) == first
    assert definition_of({**base, "position": None}) == first
    with_position = definition_of({**base, "position": "last"})
    assert json.loads(with_position)["position"] == "last"
    assert definition_of({**base, "position": 3}) != with_position
