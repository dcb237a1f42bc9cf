"""The plugin end to end with pytester, on a network whose ablation effects are known exactly.

The tiny model routes a one-hot input straight to the logits through ``hidden`` (4 units):
ablating unit k < 3 zeroes class k's logit, so class k's recall drops from 100% to 0% while
the other classes are untouched (overall drop 25 pp with balanced classes). Unit 3 carries
class three, whose bias keeps it right anyway: ablating it changes nothing.
"""

from __future__ import annotations

import json

import pytest
from tiny_source import HEAD, spec

pytest_plugins = ["pytester"]


GOOD = """\
checks:
  - layer: hidden
    units: [1]
    expect:
      one: {min_drop: 90%}
      overall: {max_drop: 30%}
      zero: {max_drop: 0%}
  - layer: hidden
    units: [3]
    expect:
      three: {max_drop: 0%}
"""


def test_passing_spec_runs_one_item_per_constraint(tiny: pytest.Pytester) -> None:
    spec(tiny, GOOD)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([
        "spec.yaml::hidden-u1-one-min_drop PASSED*",
        "*unitablate summary*",
        "hidden*1*one*100.0%*0.0%*100.0 pp*drop >= 90.0 pp*passed",
        "hidden*1*overall*100.0%*75.0%*25.0 pp*drop <= 30.0 pp*passed",
    ])


def test_failure_message_is_located_and_actionable(tiny: pytest.Pytester) -> None:
    spec(tiny, """\
        checks:
          - layer: hidden
            units: [3]
            expect:
              three: {min_drop: 20%}
        """)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "spec.yaml:9: hidden-u3 (zero ablation): class 'three' must have drop >= 20.0 pp",
        "  baseline 100.0% (10/10)   ablated 100.0% (10/10)   n=10",
        "  drop     0.0 pp   95% CI [[]*[]] pp (paired, Newcombe)   required drop >= 20.0 pp"
        "   missed by 20.0 pp*",
        "  McNemar exact p=1 *",
        "  To re-record: pytest --unitablate-spec spec.yaml*--unitablate-record-mode=failed",
    ])
    assert "Traceback" not in result.stdout.str()
    assert "pytest_unitablate/" not in result.stdout.str()


def test_spec_problems_are_collection_errors_exit_2(tiny: pytest.Pytester) -> None:
    spec(tiny, """\
        checks:
          - layer: hidden
            units: [1]
            expect:
              one: {min_drop: 20}
              seven: {min_drop: 20%}
        """)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    assert result.ret == 2
    result.stdout.fnmatch_lines([
        "*2 problem(s) in spec spec.yaml:",
        "spec.yaml:9: min_drop is a bare number (20); write it as a percentage*",
        "spec.yaml:10: unknown class 'seven'*",
        "*Interrupted: 1 error during collection*",
    ])
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("  - layer: hiden\n    units: [1]\n    expect:\n      one: {min_drop: 5%}\n",
         "spec.yaml:6: model Tiny has no layer 'hiden'; did you mean 'hidden'*"),
        ("  - layer: hidden\n    units: [7]\n    expect:\n      one: {min_drop: 5%}\n",
         "spec.yaml:6: unit 7 is out of range for layer 'hidden', whose output (N, [[]4[]]) "
         "has 4 units along dimension 1*"),
        ("  - layer: unused\n    units: [0]\n    expect:\n      one: {min_drop: 5%}\n",
         "spec.yaml:6: layer 'unused' never ran during the forward pass*"),
    ],
)
def test_model_dependent_problems_are_located_item_failures(
    tiny: pytest.Pytester, body: str, expected: str
) -> None:
    spec(tiny, "checks:\n" + body)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    # the spec does not fit the model, and nothing else failed: exit 2, as a spec that
    # does not load (CI tells a broken spec from a regression)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([expected, "unitablate: exit 2: every failure is a spec "
                                           "problem*"])
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize(
    ("model", "data", "expected"),
    [
        ("tinymodel:nope", "tinymodel:data",
         "spec.yaml:2: model 'tinymodel:nope': module 'tinymodel' has no attribute 'nope'"),
        ("missingpkg.models:load", "tinymodel:data",
         "spec.yaml:2: model 'missingpkg.models:load': cannot import 'missingpkg.models'*"),
        ("tinymodel:broken", "tinymodel:data",
         "spec.yaml:2: model 'tinymodel:broken' raised RuntimeError: checkpoint missing"),
        ("no_such_fixture", "tinymodel:data",
         "spec.yaml:2: model 'no_such_fixture': no fixture of that name is visible*"),
        ("tinymodel:nan_model", "tinymodel:data",
         "spec.yaml:2: model 'tinymodel:nan_model': batch 0: the model produced NaN or "
         "infinite logits for 8 of 8 examples"),
    ],
)
def test_reference_problems_are_located(
    tiny: pytest.Pytester, model: str, data: str, expected: str
) -> None:
    head = HEAD.replace("tinymodel:model", model).replace("tinymodel:data", data)
    spec(tiny, GOOD, head=head)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    # a reference that does not resolve is the spec's (exit 2); a model factory that raised
    # or a model with NaN logits is the model under test's (exit 1, as a regression)
    broken_model = model in ("tinymodel:broken", "tinymodel:nan_model")
    assert result.ret == (1 if broken_model else pytest.ExitCode.INTERRUPTED)
    result.stdout.fnmatch_lines([expected])


def test_class_index_beyond_model_width(tiny: pytest.Pytester) -> None:
    head = HEAD.replace("classes: [zero, one, two, three]\n", "")
    spec(tiny, "checks:\n  - layer: hidden\n    units: [1]\n    expect:\n"
               "      9: {min_drop: 5%}\n", head=head)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    result.stdout.fnmatch_lines(["spec.yaml:8: class index 9 (9) is out of range: the model "
                                 "has 4 outputs (0..3)"])


def test_fixtures_from_conftest_and_marks_and_k(tiny: pytest.Pytester) -> None:
    tiny.makeconftest("""
        import pytest, tinymodel
        @pytest.fixture(scope="session")
        def tiny_model():
            return tinymodel.model()
        @pytest.fixture(scope="session")
        def tiny_data():
            return tinymodel.data()
    """)
    head = HEAD.replace("tinymodel:model", "tiny_model").replace("tinymodel:data", "tiny_data")
    spec(tiny, """\
        checks:
          - layer: hidden
            units: [2]
            expect:
              two: {min_drop: 50%}
          - layer: hidden
            units: [3]
            marks: [xfail]
            expect:
              three: {min_drop: 50%}
        """, head=head)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(passed=1, xfailed=1)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "-k", "hidden-u2-two-min_drop")
    result.assert_outcomes(passed=1, deselected=1)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "-m", "not unitablate")
    result.assert_outcomes(deselected=2)


def test_json_report_and_junit_properties(tiny: pytest.Pytester) -> None:
    spec(tiny, GOOD)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report",
                            "out/report.json", "--junitxml", "junit.xml",
                            "-o", "junit_family=xunit1", "--unitablate-html",
                            "out/report.html")
    result.assert_outcomes(passed=4)
    page = (tiny.path / "out" / "report.html").read_text()
    assert "4 passed" in page and "hidden-u1-one-min_drop" in page
    doc = json.loads((tiny.path / "out" / "report.json").read_text())
    assert doc["device"] == "cpu" and doc["dtype"] == "float32"
    assert doc["torch_version"] and doc["pytest_unitablate_version"]
    first = doc["items"][0]
    assert list(first) == ["id", "spec", "line", "layer", "unit", "channel_dim", "position",
                           "units", "ablation", "target", "target_kind", "class_index",
                           "metric", "n", "baseline",
                           "ablated", "drop", "ci_low", "ci_high", "constraint",
                           "threshold", "outcome", "p_value",
                           "deciding_units", "ranking_note",
                           "units_evaluated", "units_total", "identity",
                           "matched_units", "similarity", "min_similarity", "mapping",
                           "dead_units", "recorded_drop", "reason", "problem",
                           "calibration_models", "calibration_low", "calibration_high",
                           "unguardable", "forgotten", "reference_baseline"]
    assert first["metric"] == "accuracy"
    assert first["id"] == "hidden-u1-one-min_drop" and first["line"] == 9
    assert first["units"] == [1] and first["class_index"] == 1 and first["n"] == 10
    assert first["baseline"] == 1.0 and first["ablated"] == 0.0 and first["drop"] == 1.0
    assert first["ci_low"] < 1.0 == first["ci_high"] and first["outcome"] == "passed"
    assert first["p_value"] == pytest.approx(2 * 0.5**10)
    junit = (tiny.path / "junit.xml").read_text()
    assert 'name="unitablate.drop" value="1.0"' in junit
    assert 'name="unitablate.baseline"' in junit


def test_usage_errors_exit_4(tiny: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = tiny.runpytest("--unitablate-spec", "missing.yaml")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--unitablate-spec missing.yaml: no such file or directory*"])
    spec(tiny, GOOD)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-device", "gpu0")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*'gpu0' is not a torch device*"])
    monkeypatch.setenv("CI", "true")
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=all")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*refusing --unitablate-record-mode=all: the CI environment*"])
    (tiny.path / "other.yaml").write_text("jobs: {}\n")
    result = tiny.runpytest("--unitablate-spec", "other.yaml")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*other.yaml: no spec collected from it*"])
    (tiny.path / "empty.yaml").write_text("\n")
    result = tiny.runpytest("--unitablate-spec", "empty.yaml")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*empty.yaml: the file is empty*"])


def test_ini_keys_and_cli_precedence(tiny: pytest.Pytester) -> None:
    spec(tiny, GOOD, name="a.yaml")
    spec(tiny, "checks:\n  - layer: hidden\n    units: [0]\n    expect:\n"
               "      zero: {min_drop: 90%}\n", name="b.yaml")
    tiny.makeini("[pytest]\nunitablate_spec = a.yaml\nunitablate_report = ini.json\n")
    result = tiny.runpytest()
    result.assert_outcomes(passed=4)
    assert (tiny.path / "ini.json").exists()
    result = tiny.runpytest("--unitablate-spec", "b.yaml", "--unitablate-report", "cli.json")
    result.assert_outcomes(passed=1)
    assert json.loads((tiny.path / "cli.json").read_text())["items"][0]["id"] == \
        "hidden-u0-zero-min_drop"
    result.stdout.fnmatch_lines(["unitablate: b.yaml (device cpu, seed 0)"])


def test_positional_spec_path_and_other_yaml_ignored(tiny: pytest.Pytester) -> None:
    spec(tiny, GOOD)
    (tiny.path / "ci.yaml").write_text("jobs: {}\n")
    tiny.makepyfile(test_x="def test_x():\n    pass\n")
    result = tiny.runpytest("spec.yaml")
    result.assert_outcomes(passed=4)
    result = tiny.runpytest()
    result.assert_outcomes(passed=1)  # specs are never picked up unless asked for


def test_layer_wide_checks_name_the_deciding_unit(tiny: pytest.Pytester) -> None:
    spec(tiny, """\
        checks:
          - layer: hidden
            any_unit:
              at_least: 3
              expect:
                overall: {min_drop: 20%}
          - layer: hidden
            every_unit:
              expect:
                overall: {max_drop: 20%}
          - layer: hidden
            top_units:
              k: 1
              class: two
              expect:
                two: {min_drop: 90%}
                zero: {max_drop: 0%}
        """)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report", "r.json")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "spec.yaml:14: hidden-every (zero ablation): overall accuracy must have "
        "drop <= 20.0 pp",
        "*deciding unit: 0",
        "  3 of 4 units miss it: [[]0, 1, 2[]]",  # every unit measured
    ])
    full = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-full-sweeps")
    full.stdout.fnmatch_lines(["*deciding unit: 0", "  3 of 4 units miss it: [[]0, 1, 2[]]"])
    items = {r["id"]: r for r in json.loads((tiny.path / "r.json").read_text())["items"]}
    assert items["hidden-any3-overall-min_drop"]["deciding_units"] == [0, 1, 2]
    assert items["hidden-top1-two-two-min_drop"]["deciding_units"] == [2]
    assert items["hidden-top1-two-two-min_drop"]["units"] == [2]


def test_plugin_is_inert_when_not_asked_for(pytester: pytest.Pytester,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_x="""
        import os, sys
        def test_no_torch():
            assert 'torch' not in sys.modules
            if os.environ.get('PYTEST_DISABLE_PLUGIN_AUTOLOAD'):  # ours alone
                assert 'numpy' not in sys.modules
    """)
    # other plugins in the environment (jaxtyping, which TransformerLens brings, imports
    # numpy) are switched off: the question is what ours imports
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess("-p", "pytest_unitablate.plugin")
    result.assert_outcomes(passed=1)
    assert "unitablate:" not in result.stdout.str()
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    result = pytester.runpytest_subprocess("-p", "no:unitablate")
    result.assert_outcomes(passed=1)


BOOM = '''
import torch
from torch import nn

class Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 4)

    def forward(self, x):
        raise RuntimeError("forward exploded")

def model():
    return Boom()
'''


def test_unexpected_errors_are_short_unless_full_trace(tiny: pytest.Pytester) -> None:
    tiny.makepyfile(boommodel=BOOM)
    spec(tiny, GOOD, head=HEAD.replace("tinymodel:model", "boommodel:model"))
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    result.stdout.fnmatch_lines([
        "spec.yaml:3: the model 'boommodel:model' raised RuntimeError on the data "
        "'tinymodel:data': forward exploded. Check the inputs' shape, dtype and device "
        "against what the model expects",
    ])
    assert "def forward" not in result.stdout.str()
    # native: Python's own traceback (pytest's long one parses every file in the stack,
    # which under mutation testing are the mutated copies, many times their size)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-full-trace",
                            "--tb=native")
    result.stdout.fnmatch_lines(["*raise RuntimeError(\"forward exploded\")*"])


def test_confidence_level_option_and_seed_ini(tiny: pytest.Pytester) -> None:
    spec(tiny, "checks:\n  - layer: hidden\n    units: [3]\n    expect:\n"
               "      three: {min_drop: 20%}\n")
    tiny.makeini("[pytest]\nunitablate_seed = 7\n")
    result = tiny.runpytest("--unitablate-spec", "spec.yaml",
                            "--unitablate-record-confidence", "0.9")
    result.stdout.fnmatch_lines(["unitablate: spec.yaml (device cpu, seed 7)",
                                 "  drop     0.0 pp   90% CI [[]*"])
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-seed", "3")
    result.stdout.fnmatch_lines(["unitablate: spec.yaml (device cpu, seed 3)",
                                 "  drop     0.0 pp   95% CI [[]*"])


def test_confidence_key_judges_the_bound(tiny: pytest.Pytester) -> None:
    spec(tiny, "checks:\n  - layer: hidden\n    units: [1]\n    expect:\n"
               "      overall: {min_drop: 20%, confidence: 95%}\n"
               "      two: {max_drop: 1%, confidence: 95%}\n")
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    # overall: the drop is 25 pp (above 20), but its 95% lower bound over 40 examples is
    # lower: it fails on the bound. two: drop 0 pp, upper bound ~28 pp > 1%: fails too.
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*judged on the 95% CI lower bound*",
                                 "*judged on the 95% CI upper bound*"])


def test_recorded_provenance_mismatch_warns(tiny: pytest.Pytester) -> None:
    spec(tiny, GOOD + "provenance:\n  torch_version: 0.0.1\n  device: cpu\n")
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*thresholds were recorded in another environment "
                                 "(torch_version: recorded 0.0.1, now *"])


def test_threshold_too_few_examples_can_support_is_an_error(tiny: pytest.Pytester) -> None:
    spec(tiny, "checks:\n  - layer: hidden\n    units: [1]\n    expect:\n"
               "      one: {min_drop: 90%, confidence: 99%}\n")
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "spec.yaml:9: hidden-u1-one-min_drop: the target has 10 example(s), 10 right at "
        "baseline; even if every one were lost, the 99% lower bound would be *, below the "
        "required 90.0. Use more examples or a lower threshold."])
