"""A calibrated guard through ``run_spec``, in this process: what the guard run puts in
each record (the range the reference models span, the margin), what its failure text
says of that range, what it says of an unguardable constraint left without a threshold,
and which differences from the recorded environment it reports.

The plugin's calibration tests run pytest in subprocesses; these call the engine
directly, so every field and every line is checked where it is made.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from calibration_source import BODY, HEAD, MODEL

from pytest_unitablate import run_spec
from pytest_unitablate.engine.run import SpecRun
from pytest_unitablate.plugin.record_mode import CI_VARIABLES
from pytest_unitablate.verdicts.calibration import calibration_path

ZERO = "hidden-u0-zero-min_drop"
ONE = "hidden-u1-one-min_relative_drop"


@pytest.fixture
def folder(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The calibration model importable, its spec, and three reference models recorded."""
    for var in CI_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    pytester.makepyfile(calmodel=MODEL)
    (pytester.path / "spec.yaml").write_text(HEAD + BODY)
    pytester.syspathinsert()
    for variant in ("0", "1", "2"):
        _run(monkeypatch, variant, record_mode="calibrate")
    return pytester.path


def _run(monkeypatch: pytest.MonkeyPatch, variant: str, **kwargs: Any) -> SpecRun:
    monkeypatch.setenv("VARIANT", variant)
    return run_spec("spec.yaml", **kwargs)


def _item(run: SpecRun, item_id: str) -> Any:
    return next(i for i in run.items if i.record["id"] == item_id)


def _points(folder: Path, item: str) -> list[dict[str, Any]]:
    data = json.loads(calibration_path(folder / "spec.yaml").read_text())
    return list(data["items"][item]["points"].values())


def test_the_guard_run_records_the_range_the_references_span(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    item = _item(_run(monkeypatch, "3"), ZERO)
    zero = item.record
    values = [p["value"] for p in _points(folder, ZERO)]
    assert item.outcome == "passed"
    assert zero["calibration_models"] == 3
    assert zero["calibration_low"] == pytest.approx(min(values), abs=1e-12)
    assert zero["calibration_high"] == pytest.approx(max(values), abs=1e-12)
    # the margin: how far the measurement is on the passing side of the threshold
    assert zero["outcome_margin"] == pytest.approx(zero["drop"] - zero["threshold"],
                                                   abs=1e-9)
    assert zero["outcome_margin"] > 0
    assert "calibration_point" not in zero  # only calibrate keeps this model's point


def test_a_destroyed_unit_fails_outside_the_range_an_edited_threshold_inside(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = _run(monkeypatch, "destroyed")
    item = _item(bad, ZERO)
    assert item.outcome == "failed" and item.message is not None
    line = next(x for x in item.message.splitlines() if "calibration:" in x)
    assert re.fullmatch(r"  calibration: -?\d+\.\d pp is outside the range seen over 3 "
                        r"reference model\(s\) \(\d+\.\d-\d+\.\d pp; threshold \d+\.\d pp\)",
                        line), line
    spec = folder / "spec.yaml"
    threshold = item.record["threshold"]
    # a threshold above what an honest model shows: it fails inside the references' range
    text = spec.read_text()
    assert text.count(f"min_drop: {threshold * 100:.1f}%") == 1, text
    spec.write_text(text.replace(f"min_drop: {threshold * 100:.1f}%", "min_drop: 99%"))
    honest = _run(monkeypatch, "3")
    item = _item(honest, ZERO)
    assert item.outcome == "failed" and item.message is not None
    assert " is inside the range seen over 3 reference model(s) (" in item.message
    assert "threshold 99.0 pp)" in item.message


def test_an_unguardable_constraint_without_a_threshold_says_why_and_what_could_guard(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = folder / "spec.yaml"
    spec.write_text(spec.read_text().replace("min_relative_drop: 10%",
                                             "min_relative_drop: null"))
    run = _run(monkeypatch, "3")
    item = _item(run, ONE)
    assert item.outcome == "failed" and item.message is not None
    lines = item.message.splitlines()
    assert lines[0] == f"{ONE}: unguardable over 3 models"
    assert lines[1].startswith(f"spec.yaml:14: {ONE}: unguardable over 3 models (measured ")
    assert "What could guard it: any_unit instead of a named unit" in item.message
    assert lines[-1] == "  Remove this constraint from the spec, or guard it as suggested."
    assert "To re-record" not in item.message  # recording would refuse it too


def test_what_differs_from_the_recorded_environment_is_named(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = folder / "spec.yaml"
    body = HEAD + BODY  # the thresholds as first written: the range still applies
    spec.write_text(body + "provenance:\n  weights_sha256: 0123abcd\n  dtype: float64\n"
                    "  data_sha256: feedface\n")
    run = _run(monkeypatch, "3")
    differs = run.items[0].record["provenance"]
    assert any(line.startswith("dtype: recorded float64, now float32")
               for line in differs), differs
    assert any(line.startswith("data_sha256: recorded feedface, now ") for line in differs)
    assert not any("weights" in line for line in differs)
    spec.write_text(body + "provenance:\n  dtype: float32\n")
    assert "provenance" not in _run(monkeypatch, "3").items[0].record


def test_what_record_mode_measured_and_a_pass_inside_the_warn_band_are_reported(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A threshold record mode wrote carries what it measured (the record's
    ``reference_note``, which the review page shows); a pass closer to the threshold than
    ``warn_margin`` is a warning naming the item and how close it passed."""
    spec = folder / "spec.yaml"
    spec.write_text(HEAD + BODY.replace("min_drop: 50%, min_logprob_drop: 0.5",
                                        "min_drop: null, min_logprob_drop: 0.5"))
    _run(monkeypatch, "0", record_mode="new")
    assert "# the team's guess; recorded: measured " in spec.read_text()
    again = _item(_run(monkeypatch, "0"), ZERO)
    assert again.outcome == "passed"
    assert str(again.record["reference_note"]).startswith("measured ")
    assert "reference_note" not in _item(_run(monkeypatch, "0"), "hidden-u0-overall-max_drop"
                                         ).record
    drop = again.record["drop"]
    close = f"min_drop: {(drop - 0.01) * 100:.1f}%, warn_margin: 5%"
    spec.write_text(HEAD + BODY.replace("min_drop: 50%", close))
    warned = _item(_run(monkeypatch, "0"), ZERO)
    assert warned.outcome == "passed"
    assert len(warned.warnings) == 1 and warned.warnings[0].startswith(
        f"spec.yaml:9: {ZERO} passes by only ")
    assert warned.warnings[0].endswith(" (warn_margin 5%)")
