"""Record mode never turns a guard into a check that cannot fail, and it repairs thresholds
the data cannot support (the tiny model: unit k < 3 carries class k, unit 3 carries nothing)."""

from __future__ import annotations

import json
import math
import re

import pytest
from tiny_source import spec

from pytest_unitablate.spec.loader import load_spec

REGRESSION = """\
checks:
  - layer: hidden
    units: [3]                 # the team believed unit 3 carries class three
    expect:
      three: {min_drop: 40%}
  - layer: hidden
    units: [1]
    expect:
      one: {max_drop: 10%}     # unit 1 takes all of class one: no bound below 100 pp
      overall: {max_drop: 20%}
  - layer: hidden
    units: [2]
    expect:
      two: {min_drop: 90%}
"""


def _thresholds(path: object) -> dict[tuple[int, str, str], float | None]:
    loaded = load_spec(path)  # type: ignore[arg-type]
    return {(c.index, str(e.target), k.kind): k.threshold
            for c in loaded.checks for e in c.expectations for k in e.constraints}


def test_failed_mode_refuses_to_write_a_bound_that_cannot_fail(tiny: pytest.Pytester) -> None:
    path = spec(tiny, REGRESSION)
    before = _thresholds(path)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=failed")
    result.assert_outcomes(passed=1, failed=3)
    result.stdout.fnmatch_lines([
        "spec.yaml:9: hidden-u3 no longer carries class 'three' (drop 0.0 pp, 95% CI [[]*[]] "
        "pp): not recorded, because a min_drop of -27.8 pp (at or below 0) passes whatever "
        "the ablation does; such a threshold could never fail. Remove this check or choose "
        "another unit.",
    ])
    result.stdout.fnmatch_lines([
        "spec.yaml:13: hidden-u1 damages class 'one' too much to bound (drop 100.0 pp*"
        "a max_drop of 100.0 pp allows every drop: the baseline accuracy is 100.0%*",
    ])
    result.stdout.fnmatch_lines([
        "unitablate: 2 threshold(s) NOT recorded: *",
        "  spec.yaml:9: hidden-u3-three-min_drop",
        "  spec.yaml:13: hidden-u1-one-max_drop",
    ])
    after = _thresholds(path)
    assert after[(0, "three", "min_drop")] == before[(0, "three", "min_drop")] == 0.4
    assert after[(1, "one", "max_drop")] == 0.1
    # failed mode leaves a passing threshold alone (measured 100 pp against 90%)
    assert after[(2, "two", "min_drop")] == before[(2, "two", "min_drop")] == 0.9
    # the overall max_drop (25 pp > 20%) is an honest miss: recorded, and then it passes
    assert after[(1, "overall", "max_drop")] is not None
    assert after[(1, "overall", "max_drop")] > 0.25
    again = tiny.runpytest("--unitablate-spec", "spec.yaml")
    again.assert_outcomes(passed=2, failed=2)


def test_a_record_floor_refuses_weak_bounds(tiny: pytest.Pytester) -> None:
    body = """\
        checks:
          - layer: hidden
            units: [1]
            expect:
              overall: {min_drop: null}   # 25 pp, 95% lower bound 11.1 pp
        """
    path = spec(tiny, body)
    high = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new",
                          "--unitablate-record-floor", "12")
    high.assert_outcomes(failed=1)
    high.stdout.fnmatch_lines(["*hidden-u1 carries too little of overall accuracy*a min_drop "
                               "of 11.0 pp is below the record floor of 12.0 pp. Remove*"])
    assert _thresholds(path)[(0, "overall", "min_drop")] is None
    low = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new",
                         "-o", "unitablate_record_floor=10", "--unitablate-record-min-share=0")
    low.assert_outcomes(passed=1)
    assert _thresholds(path)[(0, "overall", "min_drop")] == pytest.approx(0.110)


def test_a_bound_that_keeps_too_little_of_the_effect_is_not_recorded(
        tiny: pytest.Pytester) -> None:
    body = """\
        checks:
          - layer: hidden
            units: [1]
            expect:
              overall: {min_drop: null}   # 25 pp, 95% lower bound 11.1 pp: 44% of it
        """
    path = spec(tiny, body)
    before = path.read_bytes()
    weak = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new")
    weak.assert_outcomes(failed=1)
    weak.stdout.fnmatch_lines([
        "hidden-u1 overall: drop 25.0 pp on 40 examples is too uncertain to guard: not "
        "recorded",
        "*hidden-u1 carries overall accuracy (drop 25.0 pp, 95% CI [[]11.*] pp, n=40), but a "
        "guard would be weak: not recorded*",
        "*a min_drop of 11.0 pp keeps 44% of the measured drop of 25.0 pp (less than 50%)*",
        "*To guard it: evaluate on about * examples of the target*guard it with "
        "min_logprob_drop: the same ablation shows log-prob drop *",
        "*1 threshold(s) NOT recorded: the bound would guard too little*",
        "*spec.yaml:*: *hidden-u1*"])
    assert path.read_bytes() == before
    report = tiny.path / "r.json"
    ok = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new",
                        "--unitablate-record-min-share=0.4", f"--unitablate-report={report}")
    ok.assert_outcomes(passed=1)
    assert _thresholds(path)[(0, "overall", "min_drop")] == pytest.approx(0.110)


def test_all_mode_repairs_thresholds_the_data_cannot_support(tiny: pytest.Pytester) -> None:
    path = spec(tiny, """\
        checks:
          - layer: hidden
            units: [2]
            expect:
              two: {min_drop: 95%, confidence: 95%}   # 10 examples cannot support this bound
        """)
    plain = tiny.runpytest("--unitablate-spec", "spec.yaml")
    plain.assert_outcomes(failed=1)
    plain.stdout.fnmatch_lines(["*even if every one were lost*"])
    repaired = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=all")
    repaired.assert_outcomes(passed=1)
    value = _thresholds(path)[(0, "two", "min_drop")]
    assert value is not None and 0.5 < value < 0.95
    tiny.runpytest("--unitablate-spec", "spec.yaml").assert_outcomes(passed=1)


def test_a_top_units_ranking_that_cannot_decide_says_so(tiny: pytest.Pytester) -> None:
    spec(tiny, """\
        checks:
          - layer: hidden
            top_units:
              k: 1
              class: three             # no single unit lowers class three
              expect:
                three: {min_drop: 50%}
        """)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report", "r.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["  ranking: no single unit lowers three on the ranking data "
                                 "(every drop <= 0): the choice of 1 unit(s) is by index alone"])
    (item,) = json.loads((tiny.path / "r.json").read_text())["items"]
    assert item["deciding_units"] == [0] and "by index alone" in item["ranking_note"]


def test_record_mode_writes_logprob_bounds_in_nats_and_a_rerun_passes(
        tiny: pytest.Pytester) -> None:
    path = spec(tiny, """\
        checks:
          - layer: hidden
            units: [1]
            expect:
              one: {min_logprob_drop: null}
              overall: {max_logprob_drop: null}
        """)
    new = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new")
    new.assert_outcomes(passed=2)
    text = path.read_text()
    assert re.search(r"one: \{min_logprob_drop: \d+\.\d{3}\}\s+# recorded: measured "
                     r"\d+\.\d{3} nats, margin \d+\.\d{3} nats", text), text
    thresholds = _thresholds(path)
    low, high = thresholds[(0, "one", "min_logprob_drop")], \
        thresholds[(0, "overall", "max_logprob_drop")]
    assert low is not None and high is not None and low > 0 and high > 0
    again = tiny.runpytest("--unitablate-spec", "spec.yaml", "-v", "--unitablate-report",
                           "r.json")
    again.assert_outcomes(passed=2)
    again.stdout.fnmatch_lines(["*hidden*1*one*nats*log-prob drop >= *nats*passed*"])
    items = {i["constraint"]: i for i in json.loads((tiny.path / "r.json").read_text())
             ["items"]}
    one = items["min_logprob_drop"]
    assert one["metric"] == "logprob" and one["drop"] >= low
    # logits [0, 1, 0, 0.5] at baseline, [0, 0, 0, 0.5] with hidden unit 1 ablated
    before = 1 - math.log(2 + math.e + math.exp(0.5))
    after = 0 - math.log(3 + math.exp(0.5))
    assert one["drop"] == pytest.approx(before - after, abs=1e-5)
    # the drop record mode wrote beside the threshold is read back from its comment
    loaded = load_spec(path)
    (constraint,) = loaded.checks[0].expectations[0].constraints
    assert constraint.measured == pytest.approx(one["drop"], abs=1e-3)


def test_record_mode_writes_the_reference_datas_fingerprint_into_provenance(
        tiny: pytest.Pytester) -> None:
    path = spec(tiny, """\
        reference: tinymodel:data
        ablation: mean
        checks:
          - layer: hidden
            units: [1]
            expect:
              one: {min_logprob_drop: null}
        """)
    new = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new")
    new.assert_outcomes(passed=1)
    provenance = dict(load_spec(path).provenance)
    assert re.fullmatch(r"tinymodel:data=[0-9a-f]{16}", provenance["reference_sha256"])
    assert provenance["data_sha256"] == provenance["reference_sha256"].split("=")[1]
