"""Record mode round trip, and xdist equivalence with a serial run."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


SPEC = """\
# my comment at the top
unitablate: 1
model: tinymodel:model
data: tinymodel:data
classes: [zero, one, two, three]
checks:
  # unit 1 carries class one
  - layer: hidden
    units: [1]
    expect:
      one: {min_drop: null}   # to be recorded
      overall: {max_drop: 30%}
  - layer: hidden
    units: [2]
    expect:
      two:
        min_drop: 99.5%       # the drop is exactly 100 pp
      zero: {max_drop: -5%}   # impossible: a drop below -5 pp
  - layer: hidden
    every_unit:
      expect:
        overall: {max_drop: null}
"""


@pytest.fixture
def spec_dir(tiny: pytest.Pytester) -> pytest.Pytester:
    (tiny.path / "spec.yaml").write_text(SPEC)
    return tiny


def test_default_mode_never_writes_and_null_threshold_fails(spec_dir: pytest.Pytester) -> None:
    result = spec_dir.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(passed=2, failed=3)  # two null thresholds, one impossible
    result.stdout.fnmatch_lines([
        "spec.yaml:11: hidden-u1-one-min_drop: no threshold recorded yet*",
        "  To record it: pytest --unitablate-spec spec.yaml*--unitablate-record-mode=new",
    ])
    assert (spec_dir.path / "spec.yaml").read_text() == SPEC


def test_record_new_fills_only_null_thresholds_then_rerun_passes(spec_dir: pytest.Pytester) -> None:
    result = spec_dir.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new")
    result.assert_outcomes(passed=4, failed=1)  # the impossible max_drop still fails
    result.stdout.fnmatch_lines(["unitablate: *spec.yaml: 2 threshold(s) recorded/updated*"])
    text = (spec_dir.path / "spec.yaml").read_text()
    assert "# my comment at the top" in text and "# unit 1 carries class one" in text
    assert "max_drop: 30%" in text and "zero: {max_drop: -5%}   # impossible" in text
    assert "recorded: measured 100.0 pp" in text
    assert "provenance:" in text and "weights_sha256" in text
    result = spec_dir.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(passed=4, failed=1)


def test_record_failed_rewrites_failures_which_still_fail_then_pass(
    spec_dir: pytest.Pytester,
) -> None:
    spec_dir.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new")
    result = spec_dir.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=failed")
    result.assert_outcomes(passed=4, failed=1)
    text = (spec_dir.path / "spec.yaml").read_text()
    assert "max_drop: -5%" not in text
    result = spec_dir.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(passed=5)


def test_record_all_passes_and_is_idempotent(spec_dir: pytest.Pytester) -> None:
    result = spec_dir.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=all")
    result.assert_outcomes(passed=5)
    first = (spec_dir.path / "spec.yaml").read_text()
    spec_dir.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=all")
    assert (spec_dir.path / "spec.yaml").read_text() == first
    spec_dir.runpytest("--unitablate-spec", "spec.yaml").assert_outcomes(passed=5)


def test_record_force_overrides_ci_refusal(spec_dir: pytest.Pytester,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    result = spec_dir.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new",
                            "--unitablate-record-force")
    result.assert_outcomes(passed=4, failed=1)


@pytest.mark.slow
@pytest.mark.requires_xdist
def test_xdist_gives_the_same_outcomes_and_report_as_serial(spec_dir: pytest.Pytester) -> None:
    body = textwrap.dedent(SPEC).replace("null", "10%")
    (spec_dir.path / "spec.yaml").write_text(body)
    serial = spec_dir.runpytest_subprocess("--unitablate-spec", "spec.yaml",
                                       "--unitablate-report", "serial.json")
    parallel = spec_dir.runpytest_subprocess("--unitablate-spec", "spec.yaml", "-n", "2",
                                         "--unitablate-report", "parallel.json")
    assert serial.parseoutcomes() == parallel.parseoutcomes()
    a = json.loads(Path(spec_dir.path, "serial.json").read_text())
    b = json.loads(Path(spec_dir.path, "parallel.json").read_text())
    assert a == b and len(a["items"]) == 5
    parallel.stdout.fnmatch_lines(
        ["unitablate: 5 items of 3 checks, 2 failed; report: parallel.json"])
    assert not list(spec_dir.path.glob("*.tmp"))
