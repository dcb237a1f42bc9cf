"""Record mode ``calibrate``: thresholds from several reference models, through pytest.

The model: ``logits = hidden(x) + alpha * x`` with ``hidden`` the identity, so ablating
hidden unit k leaves class k only its ``alpha_k`` share of the logit; each variant (a
"retrain") has other alphas, so unit k's class drop varies between variants as training
noise does. Labels are the input's argmax with 10% flipped: no variant is 100% right.
"""

from __future__ import annotations

import json
import sys

import pytest
from calibration_source import BODY, HEAD, MODEL
from tiny_source import spec

from pytest_unitablate.spec.loader import load_spec
from pytest_unitablate.verdicts.calibration import calibration_path


@pytest.fixture
def cal(tiny: pytest.Pytester) -> pytest.Pytester:
    tiny.makepyfile(calmodel=MODEL)
    spec(tiny, BODY, head=HEAD)
    return tiny


def _calibrate(p: pytest.Pytester, variant: str, monkeypatch: pytest.MonkeyPatch
               ) -> pytest.RunResult:
    monkeypatch.setenv("VARIANT", variant)
    return p.runpytest_subprocess("--unitablate-spec", "spec.yaml", "-p", "no:randomly",
                                  "--unitablate-record-mode=calibrate")


def _thresholds(p: pytest.Pytester) -> dict[tuple[int, str, str], float | None]:
    loaded = load_spec(p.path / "spec.yaml")
    return {(c.index, str(e.target), k.kind): k.threshold
            for c in loaded.checks for e in c.expectations for k in e.constraints}


def test_calibrate_writes_thresholds_from_three_models_and_refuses_unguardable(
        cal: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    before = (cal.path / "spec.yaml").read_text()
    first = _calibrate(cal, "0", monkeypatch)
    first.stdout.fnmatch_lines(["*1 model(s) recorded); thresholds are calibrated from 3 "
                                "models on (record 2 more reference model(s))"])
    assert (cal.path / "spec.yaml").read_text() == before  # nothing written from one model
    again = _calibrate(cal, "0", monkeypatch)  # the same weights count once
    again.stdout.fnmatch_lines(["*(1 model(s) recorded)*"])
    _calibrate(cal, "1", monkeypatch).stdout.fnmatch_lines(["*(2 model(s) recorded)*"])
    third = _calibrate(cal, "2", monkeypatch)
    third.stdout.fnmatch_lines(["*(3 model(s) recorded)*"])
    # unit 1's drop of class one is 0 in variant 0: unguardable, not written, and the run
    # fails (the spec still holds a guess that honest retrains would fail)
    third.assert_outcomes(passed=4)
    assert third.ret == pytest.ExitCode.TESTS_FAILED
    third.stdout.fnmatch_lines([
        "unitablate: 1 constraint(s) unguardable over the reference models, NOT recorded*",
        "*spec.yaml:14: hidden-u1-one-min_relative_drop: unguardable over 3 models (measured "
        "0.0-*%)",
        "  the calibrated min_relative_drop would be *: a min_relative_drop of * passes "
        "whatever the ablation does.",
        "*What could guard it: any_unit instead of a named unit*"])
    third.stdout.fnmatch_lines(["unitablate: 1 threshold(s) NOT recorded: honest reference*",
                                "  spec.yaml:14: hidden-u1-one-min_relative_drop"])
    text = (cal.path / "spec.yaml").read_text()
    assert "; calibrated min_drop over 3 models: measured" in text
    assert "# the team's guess" in text  # the user's comment is kept
    file = json.loads(calibration_path(cal.path / "spec.yaml").read_text())
    assert len(file["models"]) == 3
    points = file["items"]["hidden-u0-zero-min_drop"]["points"]
    assert len(points) == 3
    values = [p["value"] for p in points.values()]
    bounds = [p["bound"] for p in points.values()]
    after = _thresholds(cal)
    # min_drop: below the lowest sampling bound, shrunk by the references' spread
    low = after[(0, "zero", "min_drop")]
    assert low is not None and 0 < low <= min(bounds) * (min(values) / max(values)) ** 2
    assert after[(1, "one", "min_relative_drop")] == 0.1  # unguardable: the old one stays
    high = after[(0, "overall", "max_drop")]
    overall = file["items"]["hidden-u0-overall-max_drop"]["points"].values()
    assert high is not None and high >= max(p["bound"] for p in overall)


def test_a_calibrated_guard_passes_an_honest_variant_and_fails_a_destroyed_one(
        cal: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    for variant in ("0", "1", "2"):
        _calibrate(cal, variant, monkeypatch)
    monkeypatch.setenv("VARIANT", "3")
    honest = cal.runpytest_subprocess("--unitablate-spec", "spec.yaml", "-p", "no:randomly",
                                      "-k", "not hidden-u1")
    honest.assert_outcomes(passed=3)
    monkeypatch.setenv("VARIANT", "destroyed")
    bad = cal.runpytest_subprocess("--unitablate-spec", "spec.yaml", "-p", "no:randomly",
                                   "-k", "not hidden-u1")
    bad.assert_outcomes(passed=1, failed=2)  # class zero's two guards; overall is fine
    bad.stdout.fnmatch_lines([
        "*calibration: * pp is outside the range seen over 3 reference model(s) (*-* pp; "
        "threshold * pp)",
        "*To re-record (only for an honest retrain: *): pytest *--unitablate-spec spec.yaml "
        "*--unitablate-record-mode=calibrate"])


def test_calibrate_is_refused_in_ci(cal: pytest.Pytester,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    result = _calibrate(cal, "0", monkeypatch)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert not calibration_path(cal.path / "spec.yaml").exists()


CONFTEST = """\
import os

import pytest

import calmodel


@pytest.fixture(scope="session")
def my_model():
    with open(os.environ["WEIGHTS"]) as fh:   # stands for torch.load(MODEL_WEIGHTS)
        os.environ["VARIANT"] = fh.read().strip()
    return calmodel.model()


@pytest.fixture(scope="session")
def my_data():
    return calmodel.data()
"""


def test_discover_calibrates_through_the_users_fixtures(
        cal: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_unitablate.cli import main

    cal.makeconftest(CONFTEST)
    for variant in ("0", "1", "2", "3", "destroyed"):
        (cal.path / f"w{variant}.txt").write_text(variant)
    # the command in this process (each reference model still runs in a pytest of its own)
    assert main(["discover", "--model", "my_model", "--data", "my_data", "--weights",
                 "w0.txt", "--weights", "w1.txt", "--weights", "w2.txt", "--weights-var",
                 "WEIGHTS", "--layer", "hidden", "--classes", "zero,one,two,three",
                 "--out", "starter.yaml"]) == 0
    assert capsys.readouterr().out.startswith(
        "wrote starter.yaml with 2 checks calibrated over 3 models")
    text = (cal.path / "starter.yaml").read_text()
    assert "model: my_model" in text and "data: my_data" in text
    assert len(json.loads((cal.path / "starter.yaml.calibration.json").read_text())[
        "models"]) == 3
    monkeypatch.setenv("WEIGHTS", "w3.txt")  # an honest variant the references never saw
    honest = cal.runpytest_subprocess("--unitablate-spec", "starter.yaml", "-p",
                                      "no:randomly")
    assert honest.ret == 0 and honest.parseoutcomes()["passed"] >= 5
    monkeypatch.setenv("WEIGHTS", "wdestroyed.txt")
    bad = cal.runpytest_subprocess("--unitablate-spec", "starter.yaml", "-p", "no:randomly")
    assert bad.ret == pytest.ExitCode.TESTS_FAILED
    bad.stdout.fnmatch_lines(["*hidden-any-zero-min_*"])
    # fewer than three weights files: refused before anything runs
    few = cal.run(sys.executable, "-m", "pytest_unitablate", "discover", "--model",
                  "my_model", "--data", "my_data", "--weights", "w0.txt", "--layer", "hidden",
                  "--classes", "zero,one,two,three", "--out", "other.yaml")
    assert few.ret == 2 and "at least 3 reference models" in few.stderr.str()
    assert not (cal.path / "other.yaml").exists()


def test_discover_names_the_reference_whose_pytest_failed_and_leaves_nothing(
        cal: pytest.Pytester, capsys: pytest.CaptureFixture[str]) -> None:
    """A reference model whose fixture breaks: the error names its weights file, pytest's
    exit status and the last 15 lines pytest printed; the half-made spec is removed."""
    from pytest_unitablate.cli import main

    cal.makeconftest(CONFTEST.replace(
        "    return calmodel.model()",
        "    if os.environ[\"VARIANT\"] == \"corrupt\":\n"
        "        raise RuntimeError(\"the weights file is corrupt\")\n"
        "    return calmodel.model()"))
    for variant in ("0", "1", "corrupt"):
        (cal.path / f"w{variant}.txt").write_text(variant)
    assert main(["discover", "--model", "my_model", "--data", "my_data", "--weights",
                 "w0.txt", "--weights", "w1.txt", "--weights", "wcorrupt.txt",
                 "--weights-var", "WEIGHTS", "--layer", "hidden", "--classes",
                 "zero,one,two,three", "--out", "starter.yaml"]) == 2
    err = capsys.readouterr().err.splitlines()
    first = next(i for i, line in enumerate(err) if "calibrating on" in line)
    assert err[first].endswith("calibrating on WEIGHTS=wcorrupt.txt failed (pytest exit 1):")
    tail = err[first + 1:]
    assert len(tail) == 15 and any("RuntimeError: the weights" in line for line in tail)
    assert "error" in tail[-1]  # pytest's summary line ends the tail
    assert not (cal.path / "starter.yaml").exists()
    assert not (cal.path / "starter.yaml.calibration.json").exists()


def test_a_broken_calibration_file_is_named_and_nothing_is_written(
        cal: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    path = calibration_path(cal.path / "spec.yaml")
    path.write_text("{not json")
    spec_before = (cal.path / "spec.yaml").read_text()
    for mode in ("none", "calibrate"):
        monkeypatch.setenv("VARIANT", "0")
        result = cal.runpytest_subprocess("--unitablate-spec", "spec.yaml", "-p", "no:randomly",
                                          f"--unitablate-record-mode={mode}")
        # the calibration file belongs to the spec: its problem is the spec's (exit 2)
        assert result.ret == pytest.ExitCode.INTERRUPTED
        result.stdout.fnmatch_lines(["*spec.yaml.calibration.json: * delete it and calibrate "
                                     "again*"])
        assert "Traceback" not in result.stdout.str()
    assert path.read_text() == "{not json"
    assert (cal.path / "spec.yaml").read_text() == spec_before
