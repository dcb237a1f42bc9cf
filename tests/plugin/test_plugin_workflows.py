"""Spec items behave like ordinary parametrized tests in the workflows people use every day.

``--lf``/``--ff``/``--sw``/``--sw-skip``, node-id selection (what an IDE's "run this test"
passes), ``-v``, JUnit XML, ``--strict-markers``/``-W error``, fixtures resolved at setup,
``--durations``, pytest-rerunfailures, pytest-timeout and the terminal summary, all on the
installed pytest.
"""

from __future__ import annotations

import importlib.util
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from tiny_source import HEAD, spec

# One failing named check, one failing layer-wide check, a check with a `name:`, passes.
MIXED = """\
checks:
  - layer: hidden
    units: [1]
    expect:
      one: {min_drop: 90%}
      overall: {max_drop: 30%}
  - layer: hidden
    units: [3]
    expect:
      three: {min_drop: 20%}
  - layer: hidden
    name: carrier_of_two
    units: [2]
    expect:
      two: {min_drop: 90%}
  - layer: hidden
    every_unit:
      expect:
        overall: {max_drop: 20%}
"""
HAS_XDIST = importlib.util.find_spec("xdist") is not None
IDS = ["hidden-u1-one-min_drop", "hidden-u1-overall-max_drop", "hidden-u3-three-min_drop",
       "carrier_of_two-two-min_drop", "hidden-every-overall-max_drop"]
FAILING = ["hidden-u3-three-min_drop", "hidden-every-overall-max_drop"]


def _ran(result: pytest.RunResult) -> list[str]:
    """Node names in the order their outcome lines were printed (with -v)."""
    names = []
    for line in result.outlines:
        for word in ("PASSED", "FAILED", "ERROR", "SKIPPED"):
            if f" {word}" in line and "::" in line and not line.startswith(word):
                names.append(line.split("::", 1)[1].split(" ")[0])
    return names


@pytest.fixture
def mixed(tiny: pytest.Pytester) -> pytest.Pytester:
    spec(tiny, MIXED)
    return tiny


def test_ids_hold_no_bracket_and_each_node_id_selects_exactly_its_item(
        mixed: pytest.Pytester) -> None:
    listed = mixed.runpytest("--unitablate-spec", "spec.yaml", "--collect-only", "-q")
    node_ids = [line for line in listed.outlines if line.startswith("spec.yaml::")]
    assert node_ids == [f"spec.yaml::{i}" for i in IDS]
    for node_id in node_ids:
        assert "[" not in node_id and "]" not in node_id
        one = mixed.runpytest("--unitablate-spec", "spec.yaml", node_id, "-v")
        assert _ran(one) == [node_id.split("::", 1)[1]], one.stdout.str()


def test_node_id_selects_with_the_ini_key_too(mixed: pytest.Pytester) -> None:
    mixed.makeini("[pytest]\nunitablate_spec = spec.yaml\n")
    one = mixed.runpytest("spec.yaml::hidden-u1-overall-max_drop", "-v")
    assert _ran(one) == ["hidden-u1-overall-max_drop"]
    every = mixed.runpytest("-v")
    assert _ran(every) == IDS


def test_verbose_lines_show_the_node_id_as_is(mixed: pytest.Pytester) -> None:
    mixed.makepyfile(tinymodel2="")  # unrelated file, not collected
    result = mixed.runpytest("--unitablate-spec", "spec.yaml", "-v")
    result.stdout.fnmatch_lines(["spec.yaml::hidden-u1-one-min_drop PASSED*",
                                 "spec.yaml::hidden-every-overall-max_drop FAILED*"])
    # the failure headline names the item and its line
    result.stdout.fnmatch_lines(["*_ hidden-u3-three-min_drop (spec.yaml:14) _*"])


def test_last_failed_and_failed_first(mixed: pytest.Pytester) -> None:
    first = mixed.runpytest("--unitablate-spec", "spec.yaml")
    first.assert_outcomes(passed=3, failed=2)
    lf = mixed.runpytest("--unitablate-spec", "spec.yaml", "--lf", "-v")
    lf.assert_outcomes(failed=2, deselected=3)
    assert sorted(_ran(lf)) == sorted(FAILING)
    lf.stdout.fnmatch_lines(["run-last-failure: rerun previous 2 failures*"])
    ff = mixed.runpytest("--unitablate-spec", "spec.yaml", "--ff", "-v")
    ff.assert_outcomes(passed=3, failed=2)
    assert sorted(_ran(ff)[:2]) == sorted(FAILING)


def test_stepwise_resumes_at_the_failure_and_sw_skip_passes_it(mixed: pytest.Pytester) -> None:
    first = mixed.runpytest("--unitablate-spec", "spec.yaml", "--sw", "-v")
    assert _ran(first) == IDS[:3]  # stops at the first failure
    again = mixed.runpytest("--unitablate-spec", "spec.yaml", "--sw", "-v")
    assert _ran(again)[0] == "hidden-u3-three-min_drop"  # resumes there
    skip = mixed.runpytest("--unitablate-spec", "spec.yaml", "--sw", "--sw-skip", "-v")
    assert _ran(skip) == IDS[2:]  # skips that failure, stops at the next


def _check_junit_xunit2(path: Path) -> ET.Element:
    """The constraints pytest's junit-10.xsd (xunit2) puts on what we could produce."""
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        assert set(case.attrib) <= {"name", "time", "classname", "group"}, case.attrib
        for child in case:
            assert child.tag in {"skipped", "error", "errors", "failure", "system-out",
                                 "system-err", "rerunFailure", "rerunError", "flakyFailure",
                                 "flakyError"}, f"<{child.tag}> inside <testcase>"
    for suite in root.iter("testsuite"):
        for child in suite:
            assert child.tag in {"testsuite", "properties", "testcase", "system-out",
                                 "system-err"}, child.tag
    return root


def test_junit_is_valid_under_the_default_family_and_keeps_numbers_under_xunit1(
        mixed: pytest.Pytester) -> None:
    mixed.runpytest("--unitablate-spec", "spec.yaml", "--junitxml", "x2.xml")
    root = _check_junit_xunit2(mixed.path / "x2.xml")
    names = [c.attrib["name"] for c in root.iter("testcase")]
    assert names == IDS
    assert {c.attrib["classname"] for c in root.iter("testcase")} == {"spec.yaml"}
    mixed.runpytest("--unitablate-spec", "spec.yaml", "--junitxml", "x1.xml",
                    "-o", "junit_family=xunit1")
    cases = list(ET.parse(mixed.path / "x1.xml").getroot().iter("testcase"))
    props = {p.attrib["name"]: p.attrib["value"] for p in cases[0].iter("property")}
    assert props["unitablate.drop"] == "1.0" and props["unitablate.units"] == "[1]"
    every = {p.attrib["name"]: p.attrib["value"] for p in cases[-1].iter("property")}
    assert "unitablate.units" not in every and "unitablate.mode_key" in every
    assert all(p.attrib["value"] != "None" for c in cases for p in c.iter("property"))


@pytest.mark.slow
def test_no_unknown_marker_with_or_without_xdist(mixed: pytest.Pytester) -> None:
    for extra in ([], ["-p", "no:xdist"]):
        # a subprocess: in-process pytester runs warn about re-imported modules
        result = mixed.runpytest_subprocess("--unitablate-spec", "spec.yaml",
                                            "--strict-markers", "-W", "error", *extra)
        result.assert_outcomes(passed=3, failed=2)
        assert "PytestUnknownMarkWarning" not in result.stdout.str()
    mixed.makeconftest("""
        def pytest_collection_modifyitems(items):
            for item in items:
                print("MARKS", item.name, sorted(m.name for m in item.iter_markers()))
    """)
    installed = mixed.runpytest("--unitablate-spec", "spec.yaml", "--collect-only", "-s")
    # with pytest-xdist installed (the main suite) items are grouped per spec; in the
    # matrix session without it (noxfile.py) they carry no xdist mark at all
    marks = "['unitablate', 'xdist_group']" if HAS_XDIST else "['unitablate']"
    installed.stdout.fnmatch_lines([f"MARKS hidden-u1-one-min_drop {marks}"])
    without = mixed.runpytest("--unitablate-spec", "spec.yaml", "--collect-only", "-s",
                              "-p", "no:xdist")
    without.stdout.fnmatch_lines(["MARKS hidden-u1-one-min_drop ['unitablate']"])


FIXTURE_HEAD = HEAD.replace("model: tinymodel:model", "model: tiny_model")


def _slow_model_fixture(pytester: pytest.Pytester, seconds: float) -> None:
    """A conftest whose session-scoped ``tiny_model`` fixture takes ``seconds`` to load."""
    pytester.makeconftest(f"""
        import time
        import pytest
        import tinymodel

        @pytest.fixture(scope="session")
        def tiny_model():
            time.sleep({seconds})
            return tinymodel.model()
    """)


def test_a_failing_model_fixture_is_an_error_at_setup(tiny: pytest.Pytester) -> None:
    tiny.makeconftest("""
        import pytest

        @pytest.fixture(scope="session")
        def tiny_model():
            raise RuntimeError("checkpoint missing: weights/tiny.pt")
    """)
    spec(tiny, MIXED, head=FIXTURE_HEAD)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(errors=5)
    result.stdout.fnmatch_lines(["*ERROR at setup of hidden-u1-one-min_drop*",
                                 "*RuntimeError: checkpoint missing: weights/tiny.pt"])


def test_an_unknown_fixture_is_a_located_error_at_setup(tiny: pytest.Pytester) -> None:
    spec(tiny, MIXED, head=FIXTURE_HEAD)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml")
    result.assert_outcomes(errors=5)
    result.stdout.fnmatch_lines([
        "*ERROR at setup of hidden-u1-one-min_drop*",
        "spec.yaml:2: model 'tiny_model': no fixture of that name is visible from *"])
    assert "Traceback" not in result.stdout.str()


def test_durations_charge_model_loading_to_setup(tiny: pytest.Pytester) -> None:
    _slow_model_fixture(tiny, 0.6)
    spec(tiny, MIXED, head=FIXTURE_HEAD)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--durations=3")
    result.stdout.fnmatch_lines(["*s setup    spec.yaml::hidden-u1-one-min_drop"])
    line = next(x for x in result.outlines if "setup    spec.yaml::hidden-u1-one" in x)
    assert float(line.split("s", 1)[0]) >= 0.6


def test_reruns_keep_one_record_per_item(mixed: pytest.Pytester) -> None:
    result = mixed.runpytest("--unitablate-spec", "spec.yaml", "--reruns", "1",
                             "--unitablate-report", "r.json", "--unitablate-summary=table")
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes["failed"], outcomes["rerun"]) == (3, 2, 2)
    items = json.loads((mixed.path / "r.json").read_text())["items"]
    assert [i["id"] for i in items] == IDS
    assert [i["outcome"] for i in items].count("failed") == 2
    table = result.outlines[result.outlines.index(next(
        x for x in result.outlines if "unitablate summary" in x)):]
    assert sum(" failed" in row for row in table if row.startswith("hidden")) == 2


@pytest.mark.slow
def test_timeout_fires_in_setup_without_crashing(tiny: pytest.Pytester) -> None:
    # the timer also runs while pytest renders each item's setup error: a second of it was
    # too little on a loaded machine with pytest 8.0 (the signal landed inside pytest's
    # report code, an INTERNALERROR of pytest-timeout's making), so three seconds
    _slow_model_fixture(tiny, 10)
    spec(tiny, MIXED, head=FIXTURE_HEAD)
    result = tiny.runpytest_subprocess("--unitablate-spec", "spec.yaml", "--timeout", "3",
                                       "-p", "no:cacheprovider")
    assert result.ret == 1, result.stdout.str()  # ordinary failures, no segfault (139)
    result.stdout.fnmatch_lines(["*ERROR at setup of hidden-u1-one-min_drop*",
                                 "*Timeout*"])
    spec(tiny, MIXED, name="quick.yaml")  # the model from an import path: no slow fixture
    ok = tiny.runpytest_subprocess("--unitablate-spec", "quick.yaml", "--timeout", "60",
                                   "-p", "no:cacheprovider")
    ok.assert_outcomes(passed=3, failed=2)


@pytest.mark.parametrize(("args", "table", "line"), [
    ([], False, True),
    (["-v"], True, True),
    (["-qq"], False, False),
    (["--unitablate-summary=table"], True, True),
    (["-v", "--unitablate-summary=none"], False, False),
    (["-o", "unitablate_summary=line", "-v"], False, True),
])
def test_summary_follows_verbosity_and_the_option(mixed: pytest.Pytester, args: list[str],
                                                  table: bool, line: bool) -> None:
    result = mixed.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report",
                             "r.json", *args)
    text = result.stdout.str()
    assert ("unitablate summary" in text) == table
    assert ("unitablate: 5 items of 4 checks, 2 failed; report: r.json" in text) == line
    assert ("<mode>:<units> names a layer-wide check" in text) == table


def test_rerecord_hint_reproduces_the_run(mixed: pytest.Pytester) -> None:
    result = mixed.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-seed", "3",
                             "-p", "no:randomly")
    result.stdout.fnmatch_lines([
        "  To re-record: pytest --unitablate-spec spec.yaml --unitablate-seed 3 -p no:randomly"
        "*--unitablate-record-mode=failed"])


def test_ini_keys_are_typed_and_listed_in_help(mixed: pytest.Pytester) -> None:
    help_text = mixed.runpytest("--help").stdout.str()
    for key in ("unitablate_spec", "unitablate_device", "unitablate_seed",
                "unitablate_report", "unitablate_html", "unitablate_summary",
                "unitablate_record_mode", "unitablate_record_confidence",
                "unitablate_full_trace"):
        assert key in help_text, key
    mixed.makeini("[pytest]\nunitablate_seed = three\n")
    bad = mixed.runpytest("--unitablate-spec", "spec.yaml")
    assert bad.ret == 4
    bad.stderr.fnmatch_lines(["*unitablate_seed*"])
    mixed.makeini("[pytest]\nunitablate_seed = 5\nunitablate_full_trace = true\n"
                  "unitablate_record_confidence = 0.9\n")
    good = mixed.runpytest("--unitablate-spec", "spec.yaml")
    good.stdout.fnmatch_lines(["unitablate: spec.yaml (device cpu, seed 5)"])
    # full trace on: the unexpected-error shortcut is off, failures keep their own text
    good.stdout.fnmatch_lines(["*90% CI*"])
