"""Record mode after a run, called on item records directly: which thresholds are
written, what each spec, sidecar and calibration file holds, and the summary lines.

The plugin tests run record mode end to end; these pin the decisions of
:func:`apply_recorded` one at a time on hand-made records, each against the file it
should write.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_unitablate.spec.signatures import Signatures, sha256_text
from pytest_unitablate.verdicts.calibration import MIN_MODELS, calibration_path, definition_of
from pytest_unitablate.verdicts.recording import apply_recorded, ci_environment, record_problem

SPEC = """\
unitablate: 1
model: m
data: d
checks:
  - layer: conv5
    units: [3]
    expect:
      seven: {min_drop: 10%}
      overall: {max_relative_drop: 5%}
      two: {min_accuracy: 50%}
"""


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text(SPEC, encoding="utf-8")
    return path


def record(path: Path, **fields: Any) -> dict[str, Any]:
    """A measured item of the spec's first check (a failing ``seven: min_drop``)."""
    base: dict[str, Any] = {
        "spec": "shown/s.yaml", "spec_file": str(path), "line": 9, "id": "conv5-u3-seven",
        "outcome": "failed", "threshold": 0.10, "constraint": "min_drop",
        "check_index": 0, "mode_key": None, "target_key": "seven", "mode": "units",
        "record_value": 0.08, "drop": 0.20, "relative_drop": 0.40, "baseline": 0.90,
    }
    base.update(fields)
    return base


def line_of(text: str, key: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(key))


# --- one model's bounds -------------------------------------------------------------


def test_each_kind_reports_its_own_measurement_beside_the_bound(spec: Path) -> None:
    records = [
        record(spec),
        record(spec, id="overall", target_key="overall", constraint="max_relative_drop",
               record_value=0.06, drop=0.01, relative_drop=0.02),
        record(spec, id="two", target_key="two", constraint="min_accuracy",
               record_value=0.70, baseline=0.75, drop=0.5, relative_drop=0.6),
    ]
    lines = apply_recorded(records, "all", 0.95, {})
    text = spec.read_text(encoding="utf-8")
    # min_drop: the drop (20 pp), margin |20 - 8|
    assert "min_drop: 8.0%}  # recorded: measured 20.0 pp, margin 12.0 pp" in \
        line_of(text, "seven")
    # a relative kind: the relative drop (2%), margin |2 - 6|
    assert "max_relative_drop: 6.0%}  # recorded: measured 2.0%, margin 4.0%" in \
        line_of(text, "overall")
    # an accuracy: the baseline (75%), margin |75 - 70|
    assert "min_accuracy: 70.0%}  # recorded: measured 75.0%, margin 5.0%" in \
        line_of(text, "two")
    assert lines == [f"{spec}: 3 threshold(s) recorded/updated (3 measured, 95% bounds)"]


def test_the_summary_names_the_confidence_level_in_percent(spec: Path) -> None:
    assert apply_recorded([record(spec)], "all", 0.9, {}) == [
        f"{spec}: 1 threshold(s) recorded/updated (1 measured, 90% bounds)"]


def test_records_are_written_to_the_spec_file_not_the_name_shown(spec: Path) -> None:
    """``spec`` is the path as the user wrote it (for messages); ``spec_file`` is where
    it is."""
    apply_recorded([record(spec)], "all", 0.95, {})
    assert "min_drop: 8.0%" in spec.read_text(encoding="utf-8")
    assert not Path("shown").exists()


def test_mode_failed_leaves_passing_items_and_says_when_nothing_is_written(
        spec: Path) -> None:
    passing = record(spec, outcome="passed")
    assert apply_recorded([passing], "failed", 0.95, {}) == [
        "record mode failed: nothing to record"]
    assert spec.read_text(encoding="utf-8") == SPEC


def test_provenance_keeps_the_hashes_of_one_models_run(spec: Path) -> None:
    rec = record(spec, data_sha256="d" * 8, weights_sha256="w" * 8,
                 reference_sha256="r" * 8)
    apply_recorded([rec], "all", 0.95,
                   {"torch_version": "2.14.1", "device": "", "dtype": "float32", "other": "x"})
    block = spec.read_text(encoding="utf-8").split("provenance:", 1)[1]
    for expected in ("dddddddd", "wwwwwwww", "rrrrrrrr", "2.14.1", "float32"):
        assert expected in block
    assert "device" not in block and "other" not in block  # empty, and not the environment's


def test_one_broken_spec_does_not_stop_the_next_from_being_recorded(
        spec: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(SPEC.replace("seven: {min_drop: 10%}", "seven: {max_drop: 10%}"),
                      encoding="utf-8")
    lines = apply_recorded([record(broken, spec="a.yaml"), record(spec, spec="b.yaml")],
                           "all", 0.95, {})
    assert lines[0].startswith(f"{broken}: NOT recorded: min_drop of target 'seven'")
    assert lines[1].startswith(f"{spec}: 1 threshold(s) recorded/updated")
    assert "min_drop: 8.0%" in spec.read_text(encoding="utf-8")
    assert "max_drop: 10%" in broken.read_text(encoding="utf-8")


# --- signatures ---------------------------------------------------------------------


def signed(spec: Path, item: str, units: dict[str, list[float]], **fields: Any
           ) -> dict[str, Any]:
    return record(spec, id=item, outcome="passed", record_value=None, layer="conv5",
                  signature=units, signature_classes=["a", "b"],
                  signatures_file=str(spec.parent / "s.signatures.json"), **fields)


def test_signatures_are_written_with_a_line_per_spec_and_the_spec_names_the_sidecar(
        spec: Path) -> None:
    lines = apply_recorded([signed(spec, "x", {"3": [1.0, 0.0], "4": [0.0, 1.0]})],
                           "new", 0.95, {})
    sidecar = spec.parent / "s.signatures.json"
    assert lines == [f"{spec}: 2 unit signature(s) recorded in {sidecar}"]
    text = sidecar.read_text(encoding="utf-8")
    written = Signatures.from_text(text)
    assert written.units("conv5") == {3: (1.0, 0.0), 4: (0.0, 1.0)}
    assert written.data_sha256 == ""
    assert sha256_text(text) in spec.read_text(encoding="utf-8")


def test_records_without_a_signature_do_not_end_the_search(spec: Path) -> None:
    """Records are read sorted by id: one with no signature comes first here."""
    plain = record(spec, id="a", outcome="passed", record_value=None)
    apply_recorded([signed(spec, "b", {"3": [1.0, 0.0]}), plain], "new", 0.95, {})
    written = Signatures.from_text(
        (spec.parent / "s.signatures.json").read_text(encoding="utf-8"))
    assert written.units("conv5") == {3: (1.0, 0.0)}


def test_the_last_item_by_id_wins_on_the_same_unit(spec: Path) -> None:
    later = signed(spec, "b", {"3": [0.0, 1.0]})
    earlier = signed(spec, "a", {"3": [1.0, 0.0]})
    apply_recorded([later, earlier], "new", 0.95, {})
    written = Signatures.from_text(
        (spec.parent / "s.signatures.json").read_text(encoding="utf-8"))
    assert written.units("conv5") == {3: (0.0, 1.0)}


def test_an_existing_sidecar_keeps_its_units_and_an_unreadable_one_is_replaced(
        spec: Path) -> None:
    sidecar = spec.parent / "s.signatures.json"
    sidecar.write_text(Signatures(layers={"fc": {0: (0.5, 0.5)}}, classes=("a", "b"),
                                  data_sha256="abc").to_text(), encoding="utf-8")
    apply_recorded([signed(spec, "x", {"3": [1.0, 0.0]})], "new", 0.95, {})
    kept = Signatures.from_text(sidecar.read_text(encoding="utf-8"))
    assert kept.units("fc") == {0: (0.5, 0.5)} and kept.units("conv5") == {3: (1.0, 0.0)}
    assert kept.data_sha256 == "abc"

    sidecar.write_text("{not json", encoding="utf-8")
    apply_recorded([signed(spec, "x", {"4": [0.0, 1.0]})], "new", 0.95, {})
    replaced = Signatures.from_text(sidecar.read_text(encoding="utf-8"))
    assert set(replaced.layers) == {"conv5"} and replaced.units("conv5") == {4: (0.0, 1.0)}


# --- calibrate ----------------------------------------------------------------------


def calibrating(spec: Path, sha: str, value: float, bound: float, **fields: Any
                ) -> dict[str, Any]:
    rec = record(spec, weights_sha256=sha, data_sha256="data1", reference_sha256="ref1",
                 calibration_point={"value": value, "bound": bound}, units=[3],
                 layer="conv5", target="seven", ablation="zero", **fields)
    rec["calibration_definition"] = definition_of(rec)
    return rec


def test_calibrate_waits_for_enough_models_then_writes_what_they_span(spec: Path) -> None:
    env = {"torch_version": "2.14.1"}
    points = [("a", 0.60, 0.50), ("b", 0.95, 0.86), ("c", 0.80, 0.70)]
    lines: list[str] = []
    for count, (sha, value, bound) in enumerate(points, start=1):
        rec = calibrating(spec, sha * 64, value, bound)
        lines = apply_recorded([rec], "calibrate", 0.95, env)
        waiting = MIN_MODELS - count
        expected = (f"{spec}: this model's measurements added to {calibration_path(str(spec))}"
                    f" ({count} model(s) recorded)")
        if waiting:
            expected += (f"; thresholds are calibrated from {MIN_MODELS} models on (record "
                         f"{waiting} more reference model(s))")
            assert lines == [expected]
            assert "calibration_models" not in rec
    assert lines[0] == expected
    assert lines[1] == f"{spec}: 1 threshold(s) recorded/updated (1 measured, 95% bounds)"
    assert (rec["calibration_models"], rec["calibration_low"], rec["calibration_high"]) == (
        3, 0.60, 0.95)
    seven = line_of(spec.read_text(encoding="utf-8"), "seven")
    # min(bounds) * (min/max)**2 = 0.5 * (0.6/0.95)**2 = 19.9 pp
    assert seven == "      seven: {min_drop: 19.9%}  # calibrated over 3 models: measured " \
                    "60.0-95.0 pp"
    block = spec.read_text(encoding="utf-8").split("provenance:", 1)[1]
    # several models' weights: none of them is the spec's
    assert "data1" in block and "ref1" in block and "2.14.1" in block
    assert "c" * 64 not in block
    saved = json.loads(calibration_path(str(spec)).read_text(encoding="utf-8"))
    assert sorted(saved["items"]["conv5-u3-seven"]["points"]) == [s * 64 for s in "abc"]


def test_a_measurement_without_weights_is_not_a_reference_model(spec: Path) -> None:
    rec = calibrating(spec, "", 0.5, 0.4)
    assert apply_recorded([rec], "calibrate", 0.95, {}) == [
        "record mode calibrate: nothing to record"]
    assert not calibration_path(str(spec)).exists()


def test_an_unmeasured_item_neither_stops_the_others_nor_gets_a_threshold(
        spec: Path) -> None:
    for sha in "abc":
        skipped = record(spec, id="a-skipped", target_key="two", constraint="min_accuracy",
                         outcome="skipped", record_value=None, weights_sha256=sha * 64,
                         calibration_definition=json.dumps({"layer": "conv5"}))
        apply_recorded([calibrating(spec, sha * 64, 0.5, 0.4), skipped], "calibrate",
                       0.95, {})
    text = spec.read_text(encoding="utf-8")
    assert "min_drop: 40.0%" in line_of(text, "seven")  # 0.4 * (0.5 / 0.5) ** 2
    assert line_of(text, "two").endswith("{min_accuracy: 50%}")
    assert "a-skipped" not in calibration_path(str(spec)).read_text(encoding="utf-8")


def unguardable_run(spec: Path, mode: str) -> tuple[list[str], dict[str, Any]]:
    rec: dict[str, Any] = {}
    lines: list[str] = []
    for sha, value in (("a", 0.016), ("b", 0.885), ("c", 0.803)):
        rec = calibrating(spec, sha * 64, value, value * 0.9, mode=mode)
        lines = apply_recorded([rec], "calibrate", 0.95, {})
    return lines, rec


def test_an_unguardable_item_is_reported_located_and_keeps_its_threshold(
        spec: Path) -> None:
    lines, rec = unguardable_run(spec, "units")
    reason = rec["unguardable"]
    assert reason.startswith("shown/s.yaml:9: conv5-u3-seven: unguardable over 3 models "
                             "(measured 1.6-88.5 pp)")
    assert ("the calibrated min_drop would be 0.0 pp: a min_drop of 0.0 pp (at or below 0) "
            "passes whatever the ablation does.") in reason
    assert "any_unit instead of a named unit" in reason  # a named unit: the fix says so
    assert lines[1:] == [
        "1 constraint(s) unguardable over the reference models, NOT recorded (their "
        "thresholds stay as they were):", reason]
    assert line_of(spec.read_text(encoding="utf-8"), "seven").endswith("{min_drop: 10%}")


def test_an_unguardable_layer_wide_item_is_not_told_to_use_any_unit(spec: Path) -> None:
    _, rec = unguardable_run(spec, "any_unit")
    assert "any_unit instead" not in rec["unguardable"]
    assert "another layer" in rec["unguardable"]


def test_only_calibrate_keeps_a_calibration_file(spec: Path) -> None:
    """A one-model record of items that carry calibration points writes no file."""
    apply_recorded([calibrating(spec, "a" * 64, 0.5, 0.4)], "all", 0.95, {})
    assert not calibration_path(str(spec)).exists()


@pytest.mark.parametrize(("environ", "name"), [
    ({"CI": "true"}, "CI"), ({"GITHUB_ACTIONS": "1"}, "GITHUB_ACTIONS"),
    ({"CI": "no"}, None), ({"CI": "NO"}, None), ({"CI": "False"}, None), ({"CI": "0"}, None),
    ({"CI": ""}, None), ({}, None),
])
def test_what_marks_a_ci_run(environ: dict[str, str], name: str | None) -> None:
    assert ci_environment(environ) == name


def test_record_mode_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    assert record_problem("calibrated", False) == (
        "record mode must be one of none, new, failed, all, calibrate")
    monkeypatch.setenv("CI", "true")
    assert record_problem("none", False) is None  # not recording: nothing to refuse
    assert record_problem("new", True) is None  # forced
    assert record_problem("new", False) == (
        "record mode refused: CI is set (a CI run); record on a developer machine, or "
        "force it")
