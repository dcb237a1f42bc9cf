"""``run_spec`` and ``python -m pytest_unitablate check``: the engine without pytest.

The same spec through the plugin and through ``run_spec`` gives the same records and the
same failure text (the re-record hint aside, which names each front end's command); a
process that cannot import pytest evaluates a spec; ``check`` exits as pytest does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tiny_source
from no_pytest import env_without_pytest

from pytest_unitablate import run_spec
from pytest_unitablate.errors import SpecError
from pytest_unitablate.plugin.record_mode import CI_VARIABLES

#: The tiny model on data where two class-zero examples look like class one (baseline 80%
#: for zero): 7 items, 2 of which fail (B: unit 0 costs zero 80 pp; F: unit 2 costs 25 pp
#: overall).
SPEC = tiny_source.HEAD.replace("data: tinymodel:data", "data: imperfect:data") + """\
checks:
  - layer: hidden
    units: [1]
    expect:
      one: {min_drop: 90%}
      zero: {max_drop: 1%}
  - layer: hidden
    units: [0]
    expect:
      zero: {max_drop: 50%}
  - layer: hidden
    any_unit:
      expect:
        two: {min_drop: 90%}
  - layer: hidden
    every_unit:
      expect:
        overall: {max_drop: 30%}
  - layer: hidden
    top_units:
      k: 1
      class: zero
      expect:
        zero: {min_drop: 70%}
  - layer: hidden
    units: [2]
    expect:
      overall: {max_drop: 10%}
"""
FAILING = ["hidden-u0-zero-max_drop", "hidden-u2-overall-max_drop"]


@pytest.fixture
def folder(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pytester's folder (the current directory) with the tiny model (imperfect data)
    importable and the spec."""
    for var in CI_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    pytester.makepyfile(tinymodel=tiny_source.TINY, imperfect=tiny_source.IMPERFECT)
    (pytester.path / "spec.yaml").write_text(SPEC)
    pytester.syspathinsert()
    return pytester.path


def _without_hint(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if "To re-record:" not in line)


def test_run_spec_gives_the_plugins_records_and_failure_text(
        folder: Path, pytester: pytest.Pytester) -> None:
    report = folder / "report.json"
    result = pytester.runpytest("--unitablate-spec", "spec.yaml",
                                "--unitablate-report", str(report), "-p", "no:randomly")
    result.assert_outcomes(passed=5, failed=2)
    run = run_spec("spec.yaml")
    plugin = json.loads(report.read_text())
    assert run.records == plugin["items"]  # (what timing decides is in the "run" section)
    assert run.report()["torch_version"] == plugin["torch_version"]
    assert sorted(r["id"] for r in run.failed) == FAILING
    out = result.stdout.str()
    for item in run.items:
        if item.outcome == "failed":
            assert item.message is not None
            # a headline for pytest's one-line summary, then the located text
            assert item.message.splitlines()[1].startswith("spec.yaml:")
            assert _without_hint(item.message) in out  # the plugin printed the same text
            assert "To re-record: pytest --unitablate-spec spec.yaml " \
                   "--unitablate-record-mode=failed" in item.message


def test_names_resolve_from_fixtures_and_an_unknown_name_is_located(folder: Path) -> None:
    import tinymodel

    spec = folder / "named.yaml"
    spec.write_text(SPEC.replace("model: tinymodel:model", "model: my_model"))
    run = run_spec(spec, fixtures={"my_model": tinymodel.model()})
    assert len(run.records) == 7 and len(run.failed) == 2
    missing = run_spec(spec, fixtures={"other": 1})
    assert {r["outcome"] for r in missing.records} == {"error"}
    message = missing.items[0].message
    assert message is not None and message.splitlines()[1].startswith(
        f"{spec}:2: model 'my_model': it is not one of the fixtures given (other)")
    assert message.splitlines()[0] == "model 'my_model': it is not one of the fixtures given"


def test_marks_act_as_in_pytest(folder: Path) -> None:
    spec = folder / "marks.yaml"
    spec.write_text(tiny_source.HEAD + textwrap.dedent("""\
        checks:
          - layer: hidden
            units: [1]
            marks: [{skip: {reason: not today}}]
            expect:
              one: {min_drop: 90%}
          - layer: hidden
            units: [2]
            marks: [xfail]
            expect:
              two: {max_drop: 1%}
          - layer: hidden
            units: [3]
            marks: [{xfail: {strict: true}}]
            expect:
              three: {max_drop: 1%}
          - layer: hidden
            units: [0]
            marks: [{skipif: {condition: "sys.platform == 'nowhere'", reason: never}}]
            expect:
              zero: {min_drop: 90%}
        """))
    outcomes = {r["id"]: r["outcome"] for r in run_spec(spec).records}
    assert outcomes == {"hidden-u1-one-min_drop": "skipped",
                        "hidden-u2-two-max_drop": "xfailed",
                        "hidden-u3-three-max_drop": "failed",  # strict xfail that passed
                        "hidden-u0-zero-min_drop": "passed"}


def test_each_mark_gives_pytest_s_outcome_and_reason(folder: Path) -> None:
    """Every form of mark, each on a check that passes (unit 1 costs class one 100 pp) or
    fails (its max_drop: 1%): the outcome and the reason as pytest would give them."""
    checks = [
        ("[{skip: {reason: not today}}]", "fail", "skipped", "not today"),
        ("[skip]", "fail", "skipped", "skipped"),
        ("[{skip: [no reason needed]}]", "fail", "skipped", "no reason needed"),
        ("[{skipif: {condition: \"sys.platform != 'nowhere'\", reason: always}}]",
         "fail", "skipped", "always"),
        ("[{skipif: [\"os.sep != ''\"]}]", "fail", "skipped", "skipif"),
        ("[{skipif: {condition: \"platform.system() == 'Nowhere'\"}}]", "pass", "passed",
         None),
        ("[{skipif: [false]}]", "pass", "passed", None),
        ("[{xfail: {reason: known loss}}]", "fail", "xfailed", "known loss"),
        ("[{xfail: {condition: false, reason: not here}}]", "pass", "passed", None),
        ("[{xfail: [false]}, {xfail: {reason: second}}]", "fail", "xfailed", "second"),
        ("[{xfail: [true]}]", "pass", "xpassed", None),
        ("[xfail]", "fail", "xfailed", None),
        ("[{xfail: {reason: fixed now, strict: true}}]", "pass", "failed",
         "[XPASS(strict)] fixed now"),
    ]
    body = ["checks:"]
    for i, (marks, kind, _, _) in enumerate(checks):
        bound = "min_drop: 50%" if kind == "pass" else "max_drop: 1%"
        body += ["  - layer: hidden", f"    name: c{i}", "    units: [1]",
                 f"    marks: {marks}", "    expect:", f"      one: {{{bound}}}"]
    spec = folder / "marks.yaml"
    spec.write_text(tiny_source.HEAD + "\n".join(body) + "\n")
    run = run_spec(spec)
    got = {item.id.split("-")[0]: (item.outcome, item.message) for item in run.items}
    for i, (marks, _, outcome, reason) in enumerate(checks):
        assert got[f"c{i}"][0] == outcome, (marks, got[f"c{i}"])
        if reason is not None:
            assert got[f"c{i}"][1] == reason, (marks, got[f"c{i}"])
    assert got["c10"][1] is None  # an xpass says nothing
    # an xfail that missed keeps the failure text when it gives no reason
    assert str(got["c11"][1]).startswith("c11 one: drop 100.0 pp, needs <= 1.0 pp\n")


def test_a_spec_with_problems_raises_every_problem(folder: Path) -> None:
    bad = folder / "bad.yaml"
    bad.write_text(tiny_source.HEAD + "checks:\n  - layer: hidden\n    units: [1]\n"
                   "    expect:\n      one: {min_drop: 20}\n      nobody: {min_drop: 5%}\n")
    with pytest.raises(SpecError) as info:
        run_spec(bad)
    assert [p.line for p in info.value.problems] == [9, 10]


def _check(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m pytest_unitablate check`` in a process that cannot import pytest."""
    env = env_without_pytest(folder / "blocker", folder)
    return subprocess.run([sys.executable, "-m", "pytest_unitablate", "check", *args],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_check_exits_as_pytest_does_without_pytest(folder: Path) -> None:
    failing = _check(folder, "spec.yaml", "--report", "out.json")
    assert failing.returncode == 1, failing.stderr
    assert "FAILED spec.yaml::hidden-u0-zero-max_drop" in failing.stdout
    assert "unitablate: 7 items of 6 checks, 2 failed; report: out.json" in failing.stdout
    assert len(json.loads((folder / "out.json").read_text())["items"]) == 7
    (folder / "good.yaml").write_text(SPEC.replace("max_drop: 50%", "max_drop: 90%")
                                      .replace("max_drop: 10%", "max_drop: 30%"))
    assert _check(folder, "good.yaml").returncode == 0
    (folder / "bad.yaml").write_text(SPEC.replace("min_drop: 90%", "min_drop: 90"))
    bad = _check(folder, "bad.yaml")
    assert bad.returncode == 2 and "2 problem(s) in spec bad.yaml:\nbad.yaml:9: " in bad.stderr
    named = SPEC.replace("model: tinymodel:model", "model: mine")
    (folder / "named.yaml").write_text(named)
    given = _check(folder, "named.yaml", "--fixture", "mine=tinymodel:model")
    assert given.returncode == 1 and "7 items of 6 checks, 2 failed" in given.stdout
    unknown = _check(folder, "named.yaml")
    assert unknown.returncode == 1
    assert "named.yaml:2: model 'mine': it is not one of the names given with --fixture " \
           "(none)" in unknown.stdout
    # one bind error is every item's: shown once, with how many more items it cost
    assert unknown.stdout.count("it is not one of the names given") == 2  # headline + text
    assert "(the same error for 6 more items of this spec: " in unknown.stdout
    for args in (["missing.yaml"], ["spec.yaml", "--fixture", "mine"],
                 ["spec.yaml", "--device", "gpu0"], ["spec.yaml", "--bogus"],
                 ["spec.yaml", "--memory-budget", "lots"]):
        usage = _check(folder, *args)
        assert usage.returncode == 4, (args, usage.stdout, usage.stderr)


@pytest.mark.slow
def test_run_spec_in_a_process_that_cannot_import_pytest(folder: Path) -> None:
    script = textwrap.dedent("""
        import json, sys
        from pytest_unitablate import run_spec
        import tinymodel
        run = run_spec("spec.yaml", fixtures={}, seed=0)
        print(json.dumps({"outcomes": [r["outcome"] for r in run.records],
                          "pytest": any(m.split(".")[0] in ("pytest", "_pytest")
                                        for m in sys.modules)}))
    """)
    env = env_without_pytest(folder / "blocker", folder)
    proc = subprocess.run([sys.executable, "-c", script], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"outcomes": ["passed", "passed", "failed", "passed", "passed", "passed",
                                "failed"], "pytest": False}


def test_problems_have_the_plugins_outcomes(folder: Path, pytester: pytest.Pytester) -> None:
    """A problem found while measuring (an unknown layer) fails the item, as in pytest; a
    model that cannot be had (an unknown name) is an error, as pytest's setup error."""
    bad = tiny_source.HEAD + "checks:\n  - layer: hiden\n    units: [1]\n    expect:\n" \
        "      one: {min_drop: 5%}\n"
    (folder / "layer.yaml").write_text(bad)
    (folder / "name.yaml").write_text(bad.replace("model: tinymodel:model", "model: nobody"))
    for name, outcome in (("layer.yaml", "failed"), ("name.yaml", "error")):
        result = pytester.runpytest("--unitablate-spec", name, "--unitablate-report",
                                    "r.json", "-p", "no:randomly")
        plugin = json.loads((folder / "r.json").read_text())["items"]
        run = run_spec(name)
        assert [r["outcome"] for r in plugin] == [r["outcome"] for r in run.records] == \
            [outcome], result.stdout.str()
        assert run.failed == run.records


def test_bad_arguments_are_refused_at_once(folder: Path) -> None:
    with pytest.raises(ValueError, match="'gpu0' is not a torch device"):
        run_spec("spec.yaml", device="gpu0")
    with pytest.raises(TypeError, match="seed"):
        run_spec("spec.yaml", seed="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="memory_budget"):
        run_spec("spec.yaml", memory_budget="lots")
    with pytest.raises(FileNotFoundError, match=r"missing.yaml"):
        run_spec("missing.yaml")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            run_spec("spec.yaml", device="cuda")
    budgeted = run_spec("spec.yaml", memory_budget="64MiB")
    assert [r["outcome"] for r in budgeted.records] == \
        [r["outcome"] for r in run_spec("spec.yaml").records]


@pytest.mark.slow
def test_check_takes_folders_and_several_specs_and_imports_from_here(folder: Path) -> None:
    (folder / "specs").mkdir()
    (folder / "specs" / "a.yaml").write_text(SPEC)
    (folder / "specs" / "notes.yaml").write_text("title: not a spec\n")
    both = _check(folder, "specs", "spec.yaml", "--report", "both.json")
    assert both.returncode == 1, both.stderr
    assert "unitablate: 14 items of 12 checks, 4 failed; report: both.json" in both.stdout
    assert {i["spec"] for i in json.loads((folder / "both.json").read_text())["items"]} == \
        {"spec.yaml", "specs/a.yaml"}
    script = Path(sys.executable).parent / "unitablate"  # the installed console script
    env = env_without_pytest(folder / "blocker")  # (folder itself is not on the path)
    named = SPEC.replace("model: tinymodel:model", "model: mine")
    (folder / "named.yaml").write_text(named)
    proc = subprocess.run([str(script), "check", "named.yaml", "--fixture",
                           "mine=tinymodel:model"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1 and "7 items of 6 checks, 2 failed" in proc.stdout, proc.stdout


def test_the_installed_unitablate_script_is_the_command_and_says_its_version() -> None:
    import shutil
    import subprocess
    import sys

    from pytest_unitablate.version import __version__

    script = Path(sys.executable).with_name("unitablate")
    assert script.exists() or shutil.which("unitablate"), "the [project.scripts] entry"
    for argv in ([str(script), "--version"],
                 [sys.executable, "-m", "pytest_unitablate", "--version"]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stdout.strip()) == (0, f"pytest-unitablate {__version__}")


def test_a_pytest_fixture_given_as_an_import_path_is_refused_with_the_fix(folder: Path
                                                                          ) -> None:
    """check --fixture model=conftest:my_fixture: pytest refuses a direct call with an
    outcome exception (a BaseException), which must not escape as a traceback."""
    (folder / "fixture_models.py").write_text(
        "import pytest\n\n@pytest.fixture(scope='session')\ndef my_model():\n"
        "    import tinymodel\n    return tinymodel.model()\n")
    spec = folder / "fixture.yaml"
    spec.write_text(SPEC.replace("model: tinymodel:model", "model: fixture_models:my_model"))
    run = run_spec(spec)
    assert {r["outcome"] for r in run.records} == {"error"}
    message = run.items[0].message
    assert message is not None and "'fixture_models:my_model' is a pytest fixture, which only " \
        "pytest can call" in message


def test_run_spec_says_once_when_the_spec_was_recorded_in_another_environment(
        folder: Path) -> None:
    """The weights are not compared (a candidate's always differ); another torch is said
    once for the spec, in the text, not as a warning on every item."""
    spec = folder / "spec.yaml"
    spec.write_text(SPEC + "provenance:\n  weights_sha256: 0123abcd\n")
    assert "another environment" not in run_spec("spec.yaml").text()
    spec.write_text(SPEC + "provenance:\n  weights_sha256: 0123abcd\n  torch_version: 0.0.1\n")
    run = run_spec("spec.yaml")
    lines = [line for line in run.text().splitlines() if "another environment" in line]
    assert len(lines) == 1 and "torch_version: recorded 0.0.1" in lines[0]
    assert "weights_sha256" not in lines[0]
    assert not any(item.warnings for item in run.items)


def test_check_in_this_process_calls_each_import_path_once_and_writes_the_report(
        folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``check --fixture NAME=module:function`` imports and calls each function once for
    the whole spec; ``SpecRun.write_report`` writes what ``--report`` writes."""
    from pytest_unitablate.cli import main

    (folder / "counted.py").write_text(
        "import tinymodel\n\ncalls = []\n\n\ndef model():\n    calls.append(1)\n"
        "    return tinymodel.model()\n")
    (folder / "named.yaml").write_text(SPEC.replace("model: tinymodel:model", "model: mine"))
    assert main(["check", "named.yaml", "--fixture", "mine=counted:model", "--report",
                 "r.json"]) == 1
    assert "unitablate: 7 items of 6 checks, 2 failed; report: r.json" in \
        capsys.readouterr().out
    import counted

    assert counted.calls == [1]
    assert main(["check", "named.yaml", "--fixture", "other=counted:model"]) == 1
    assert "named.yaml:2: model 'mine': it is not one of the names given with --fixture " \
           "(other)" in capsys.readouterr().out
    run = run_spec(folder / "named.yaml", fixtures={"mine": counted.model()})
    run.write_report(folder / "w.json")
    assert json.loads((folder / "w.json").read_text())["items"] == run.records
    assert json.loads((folder / "w.run.json").read_text()) == json.loads(
        json.dumps(run.run_facts()))
    assert json.loads((folder / "r.json").read_text())["items"] == [
        {**r, "spec": "named.yaml"} for r in run.records]


#: ``run.text(table=True)`` on the spec above: the tiny model's numbers are exact fractions.
TEXT = """\
FAILED spec.yaml::hidden-u0-zero-max_drop
hidden-u0 zero: drop 80.0 pp, needs <= 50.0 pp
spec.yaml:14: hidden-u0 (zero ablation): class 'zero' must have drop <= 50.0 pp
  baseline 80.0% (8/10)   ablated 0.0% (0/10)   n=10
  drop     80.0 pp   95% CI [38.4, 94.3] pp (paired, Newcombe)   required drop <= 50.0 pp   \
missed by 30.0 pp (judged on the point estimate)
  McNemar exact p=0.00781 (8 flipped to wrong, 0 to right)
  To re-record: pytest --unitablate-spec spec.yaml --unitablate-record-mode=failed

FAILED spec.yaml::hidden-u2-overall-max_drop
hidden-u2 overall: drop 25.0 pp, needs <= 10.0 pp
spec.yaml:32: hidden-u2 (zero ablation): overall accuracy must have drop <= 10.0 pp
  baseline 95.0% (38/40)   ablated 70.0% (28/40)   n=40
  drop     25.0 pp   95% CI [10.4, 40.0] pp (paired, Newcombe)   required drop <= 10.0 pp   \
missed by 15.0 pp (judged on the point estimate)
  McNemar exact p=0.00195 (10 flipped to wrong, 0 to right)
  To re-record: pytest --unitablate-spec spec.yaml --unitablate-record-mode=failed

layer   units         target   baseline  ablated  drop      required         outcome
------  ------------  -------  --------  -------  --------  ---------------  -------
hidden  1             one      100.0%    0.0%     100.0 pp  drop >= 90.0 pp  passed
hidden  1             zero     80.0%     80.0%    0.0 pp    drop <= 1.0 pp   passed
hidden  0             zero     80.0%     0.0%     80.0 pp   drop <= 50.0 pp  failed
hidden  any_unit:2    two      100.0%    0.0%     100.0 pp  drop >= 90.0 pp  passed
hidden  every_unit:1  overall  95.0%     70.0%    25.0 pp   drop <= 30.0 pp  passed
hidden  0             zero     80.0%     0.0%     80.0 pp   drop >= 70.0 pp  passed
hidden  2             overall  95.0%     70.0%    25.0 pp   drop <= 10.0 pp  failed
units: the units ablated together; <mode>:<units> names a layer-wide check (any_unit, \
every_unit, top_units) and the unit(s) that decided its outcome, any_unit and every_unit \
ablate each alone, top_units together
unitablate: 7 items of 6 checks, 2 failed; report: r.json"""


def test_the_runs_text_is_what_check_prints(folder: Path) -> None:
    """Every failure as pytest prints it, the table, and a summary that counts the spec's
    checks (it once counted one check for every spec)."""
    assert run_spec("spec.yaml").text(table=True, report=Path("r.json")) == TEXT
    assert run_spec("spec.yaml").text().endswith(
        "  To re-record: pytest --unitablate-spec spec.yaml --unitablate-record-mode=failed"
        "\n\nunitablate: 7 items of 6 checks, 2 failed")


def test_one_bind_error_is_shown_once_with_the_items_it_cost(folder: Path) -> None:
    (folder / "named.yaml").write_text(SPEC.replace("model: tinymodel:model", "model: mine"))
    assert run_spec("named.yaml", fixtures={}).text() == (
        "ERROR named.yaml::hidden-u1-one-min_drop\n"
        "model 'mine': it is not one of the fixtures given\n"
        "named.yaml:2: model 'mine': it is not one of the fixtures given (none) and not an "
        "import path 'package.module:callable'\n"
        "(the same error for 6 more items of this spec: hidden-u1-zero-max_drop, "
        "hidden-u0-zero-max_drop, hidden-any-two-min_drop, hidden-every-overall-max_drop, "
        "hidden-top1-zero-zero-min_drop ...)\n"
        "\nunitablate: 7 items of 6 checks, 7 failed")
    one_more = SPEC.split("  - layer: hidden\n    units: [0]")[0].replace(
        "model: tinymodel:model", "model: mine")
    (folder / "two.yaml").write_text(one_more)
    assert "(the same error for 1 more item of this spec: hidden-u1-zero-max_drop)\n" in \
        run_spec("two.yaml", fixtures={}).text()
