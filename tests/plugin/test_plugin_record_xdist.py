"""Record mode round trip, and xdist equivalence with a serial run."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import tiny_source
import torch  # noqa: F401  (loaded before in-process pytester runs; see test_plugin_run)

pytest_plugins = ["pytester"]

TINY = tiny_source.TINY

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
def tiny(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for var in ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TF_BUILD"):
        monkeypatch.delenv(var, raising=False)
    pytester.makepyfile(tinymodel=TINY)
    pytester.syspathinsert()
    (pytester.path / "spec.yaml").write_text(SPEC)
    return pytester


def test_default_mode_never_writes_and_null_threshold_fails(tiny: pytest.Pytester) -> None:
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(passed=2, failed=3)  # two null thresholds, one impossible
    result.stdout.fnmatch_lines([
        "spec.yaml:11: hidden[[]1[]]-one-min_drop: no threshold recorded yet*",
        "  To record it: pytest --unitablate-spec spec.yaml --unitablate-record-mode=new*",
    ])
    assert (tiny.path / "spec.yaml").read_text() == SPEC


def test_record_new_fills_only_null_thresholds_then_rerun_passes(tiny: pytest.Pytester) -> None:
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new")
    result.assert_outcomes(passed=4, failed=1)  # the impossible max_drop still fails
    result.stdout.fnmatch_lines(["unitablate: *spec.yaml: 2 threshold(s) recorded/updated*"])
    text = (tiny.path / "spec.yaml").read_text()
    assert "# my comment at the top" in text and "# unit 1 carries class one" in text
    assert "max_drop: 30%" in text and "zero: {max_drop: -5%}   # impossible" in text
    assert "recorded: measured 100.0 pp" in text
    assert "provenance:" in text and "weights_sha256" in text
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(passed=4, failed=1)


def test_record_failed_rewrites_failures_which_still_fail_then_pass(
    tiny: pytest.Pytester,
) -> None:
    tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new")
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=failed")
    result.assert_outcomes(passed=4, failed=1)
    text = (tiny.path / "spec.yaml").read_text()
    assert "max_drop: -5%" not in text
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(passed=5)


def test_record_all_passes_and_is_idempotent(tiny: pytest.Pytester) -> None:
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=all")
    result.assert_outcomes(passed=5)
    first = (tiny.path / "spec.yaml").read_text()
    tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=all")
    assert (tiny.path / "spec.yaml").read_text() == first
    tiny.runpytest("--unitablate-spec", "spec.yaml").assert_outcomes(passed=5)


def test_record_force_overrides_ci_refusal(tiny: pytest.Pytester,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new",
                            "--unitablate-record-force")
    result.assert_outcomes(passed=4, failed=1)


@pytest.mark.slow
def test_xdist_gives_the_same_outcomes_and_report_as_serial(tiny: pytest.Pytester) -> None:
    body = textwrap.dedent(SPEC).replace("null", "10%")
    (tiny.path / "spec.yaml").write_text(body)
    serial = tiny.runpytest_subprocess("--unitablate-spec", "spec.yaml",
                                       "--unitablate-report", "serial.json")
    parallel = tiny.runpytest_subprocess("--unitablate-spec", "spec.yaml", "-n", "2",
                                         "--unitablate-report", "parallel.json")
    assert serial.parseoutcomes() == parallel.parseoutcomes()
    a = json.loads(Path(tiny.path, "serial.json").read_text())
    b = json.loads(Path(tiny.path, "parallel.json").read_text())
    assert a == b and len(a["items"]) == 5
    parallel.stdout.fnmatch_lines(["*unitablate summary*"])
    assert not list(tiny.path.glob("*.tmp"))
