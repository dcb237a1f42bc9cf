"""A team's first day (issue 31): what a run says about what it tested, how it exits, what
a forgotten class looks like, and how quiet it is. Every model here is imperfect at
baseline; the weights come from a conftest fixture reading ``MODEL_WEIGHTS``, as the
getting-started page's does."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tiny_source

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow  # subprocess runs of pytest (about a minute in all)

ROOT = Path(__file__).resolve().parents[2]

#: Two xdist workers where pytest-xdist is installed (the matrix has a session without it:
#: the same tests then run serially)
XDIST = ("-n", "2") if importlib.util.find_spec("xdist") is not None else ()

#: A conftest whose model fixture loads the weights ``MODEL_WEIGHTS`` names (the reference
#: by default: the plugin tests' tiny network, ``tiny_source.TINY``) and says which
#: checkpoint it loaded; the data get two class-zero examples wrong at baseline, and with
#: ``FORGET=1`` six of class one's ten (a fine-tune that forgot the class: one falls to 40%).
CONFTEST = tiny_source.TINY + '''
import os

import pytest


@pytest.fixture(scope="session")
def my_model():
    path = os.environ.get("MODEL_WEIGHTS", "reference.pt")
    model = Tiny()
    model.load_state_dict(torch.load(path))
    model.unitablate_checkpoint = path
    return model.eval()


@pytest.fixture(scope="session")
def my_data():
    labels = torch.arange(4).repeat(10)
    inputs = torch.eye(4)[labels]
    inputs[0:8:4] = torch.eye(4)[1]
    if os.environ.get("FORGET") == "1":
        ones = (labels == 1).nonzero().flatten()[:6]
        inputs[ones] = torch.eye(4)[0]
    return [(inputs[i:i + 8], labels[i:i + 8]) for i in range(0, 40, 8)]
'''

HEAD = """\
unitablate: 1
model: my_model
data: my_data
classes: [zero, one, two, three]
"""

SPEC = HEAD + """\
checks:
  - layer: hidden
    units: [1]
    expect:
      one: {min_drop: 60%}
  - layer: hidden
    units: [2]
    expect:
      two: {min_drop: 90%}
"""


@pytest.fixture
def day(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project with the conftest above, its reference weights and a candidate whose
    unit 2 no longer carries class two (a fine-tune that silenced it)."""
    from pytest_unitablate.plugin.record_mode import CI_VARIABLES

    for var in (*CI_VARIABLES, "MODEL_WEIGHTS", "FORGET"):
        monkeypatch.delenv(var, raising=False)
    pytester.makeconftest(CONFTEST)
    script = textwrap.dedent("""
        import sys, torch
        sys.path.insert(0, ".")
        from conftest import Tiny
        ref = Tiny()
        torch.save(ref.state_dict(), "reference.pt")
        with torch.no_grad():
            ref.hidden.weight[2, 2] = 0.0   # unit 2 silenced: class two now rests on the bias
            ref.head.bias[2] = 0.6
        torch.save(ref.state_dict(), "candidate.pt")
    """)
    subprocess.run([sys.executable, "-c", script], cwd=pytester.path, check=True)
    (pytester.path / "spec.yaml").write_text(SPEC)
    return pytester


def _run(day: pytest.Pytester, *args: str) -> pytest.RunResult:
    return day.runpytest_subprocess("--unitablate-spec", "spec.yaml", "-p", "no:randomly",
                                    *args, timeout=300)


def _with_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_the_rerecord_command_and_the_report_name_the_weights_that_failed(
        day: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as printed, the re-record command measures the weights that failed (it carries
    MODEL_WEIGHTS); the failure, the report and the page name them; record mode run
    without them says it measured other weights."""
    _with_env(monkeypatch, MODEL_WEIGHTS="candidate.pt")
    result = _run(day, "--unitablate-report", "r.json", "--unitablate-html", "r.html",
                  *XDIST)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    # (report, page, --basetemp and -n 2 are left out)
    result.stdout.fnmatch_lines(["  To re-record: MODEL_WEIGHTS=candidate.pt pytest *"
                                 "--unitablate-spec spec.yaml -p no:randomly "
                                 "--unitablate-record-mode=failed"])
    assert "Weights under test: sha256 " in out and "(candidate.pt)" in out
    report = json.loads((day.path / "r.json").read_text())
    assert report["chosen_by"] == {"MODEL_WEIGHTS": "candidate.pt"}
    [tested] = report["tested"]
    assert tested["model"] == "my_model" and tested["data"] == "my_data"
    assert tested["checkpoint"] == "candidate.pt" and len(tested["weights_sha256"]) == 16
    assert len(tested["data_sha256"]) == 16
    page = (day.path / "r.html").read_text()
    assert "MODEL_WEIGHTS=candidate.pt" in page and tested["weights_sha256"] in page
    assert "To re-record: MODEL_WEIGHTS=candidate.pt" in page  # the failure's next step
    # the printed command without the variable: record mode says what it measured
    monkeypatch.delenv("MODEL_WEIGHTS")
    wrong = _run(day, "--unitablate-record-mode=failed")
    wrong.stdout.fnmatch_lines([
        "unitablate: WARNING spec.yaml: record mode measured weights sha256 *, not the "
        "weights that failed in the last run (sha256 *, candidate.pt, chosen by "
        "MODEL_WEIGHTS=candidate.pt); rerun with what chose them*"])
    # once a run of the spec passed, record mode has no failing weights to compare with
    assert _run(day).ret == pytest.ExitCode.OK
    assert "WARNING" not in _run(day, "--unitablate-record-mode=failed").stdout.str()


def test_without_the_fixture_saying_the_variable_names_the_weights_file(
        day: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    conftest = day.path / "conftest.py"
    conftest.write_text(conftest.read_text().replace(
        "    model.unitablate_checkpoint = path\n", ""))
    _with_env(monkeypatch, MODEL_WEIGHTS="candidate.pt")
    result = _run(day, "--unitablate-report", "r.json")
    result.stdout.fnmatch_lines(["  Weights under test: sha256 * (candidate.pt)"])
    assert json.loads((day.path / "r.json").read_text())["tested"][0]["checkpoint"] == \
        "candidate.pt"


def test_a_forgotten_class_is_its_own_failure_with_every_number(
        day: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_env(monkeypatch, FORGET="1")
    result = _run(day, "--unitablate-report", "r.json", "--unitablate-html", "r.html")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the model's fault: not exit 2
    result.stdout.fnmatch_lines([
        "hidden-u1 one: class 'one' is at 40.0% at baseline: its units can no longer be "
        "judged",
        "*forgotten: 4 of 10 right at baseline (40.0%); even if every one were lost, the "
        "drop would be 40.0 pp, below the required 60.0 pp",
        "*The model under test no longer knows class 'one'*"])
    assert "more examples or a lower threshold" not in result.stdout.str()
    item = next(i for i in json.loads((day.path / "r.json").read_text())["items"]
                if i["target"] == "one")
    assert item["forgotten"] is True and item["outcome"] == "failed"
    assert item["baseline"] == pytest.approx(0.4) and item["n"] == 10
    assert item["drop"] is not None and item["ablated"] is not None
    page = (day.path / "r.html").read_text()
    assert "class &#x27;one&#x27; is at 40.0% at baseline" in page


def test_spec_problems_exit_2_unless_something_else_failed(
        day: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    (day.path / "spec.yaml").write_text(HEAD + """\
checks:
  - layer: hiden
    units: [1]
    expect:
      one: {min_drop: 60%}
  - layer: hidden
    units: [9]
    expect:
      two: {min_drop: 90%}
""")
    for extra in ((), XDIST):
        result = _run(day, "--unitablate-report", "r.json", *extra)
        assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
        result.stdout.fnmatch_lines(["unitablate: exit 2: every failure is a spec problem*"])
        assert {i["problem"] for i in json.loads((day.path / "r.json").read_text())[
            "items"]} == {"spec"}
    # a regression beside it: exit 1 (the model is what CI must look at)
    (day.path / "spec.yaml").write_text(SPEC + """\
  - layer: hidden
    units: [9]
    expect:
      two: {min_drop: 90%}
""")
    _with_env(monkeypatch, MODEL_WEIGHTS="candidate.pt")  # unit 2 silenced: a regression
    both = _run(day)
    assert both.ret == pytest.ExitCode.TESTS_FAILED
    both.stdout.fnmatch_lines(["unitablate: 1 of 2 failures are spec problems (problem: "
                               "spec in the report): fix those spec lines; the others are "
                               "the model under test"])
    monkeypatch.delenv("MODEL_WEIGHTS")
    # a failing test that is not a spec item: exit 1 too
    (day.path / "spec.yaml").write_text(HEAD + "checks:\n  - layer: hidden\n    units: [9]\n"
                                        "    expect:\n      two: {min_drop: 90%}\n")
    day.makepyfile(test_other="def test_other():\n    assert False\n")
    other = day.runpytest_subprocess("--unitablate-spec", "spec.yaml", "test_other.py",
                                     "-p", "no:randomly")
    assert other.ret == pytest.ExitCode.TESTS_FAILED


def test_the_provenance_note_is_once_per_run_in_the_summary_and_ignores_the_weights(
        day: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """In CI the weights always differ from the recorded model's: that is no warning.
    Another torch is, once per run (not per xdist worker), in the summary and the report,
    not as a pytest warning."""
    (day.path / "spec.yaml").write_text(SPEC + "provenance:\n  weights_sha256: 0123abcd\n")
    _with_env(monkeypatch, MODEL_WEIGHTS="candidate.pt")
    quiet = _run(day, *XDIST)
    assert "recorded in another environment" not in quiet.stdout.str()
    assert "UnitAblateWarning" not in quiet.stdout.str()
    (day.path / "spec.yaml").write_text(SPEC + "provenance:\n  weights_sha256: 0123abcd\n"
                                        "  torch_version: 0.0.1\n")
    loud = _run(day, *XDIST, "--unitablate-report", "r.json", "-p", "no:warnings")
    lines = [line for line in loud.outlines if "recorded in another environment" in line]
    assert len(lines) == 1 and "torch_version: recorded 0.0.1" in lines[0], loud.outlines
    assert "weights_sha256" not in lines[0]
    [tested] = json.loads((day.path / "r.json").read_text())["tested"]
    assert tested["differs_from_recorded"] == [lines[0].split("(")[1].split(")")[0]]


def test_verbose_says_what_the_spec_is_about_without_engine_internals(
        day: pytest.Pytester) -> None:
    result = _run(day, "-v")
    out = result.stdout.str()
    assert "spec.yaml: model my_model (weights sha256 " in out
    assert "on my_data: 2 checks of hidden (targets one, two)" in out
    assert "unitablate cache:" not in out and "attention head" not in out
    assert "identity: signature" not in out and "<mode>" not in out  # no such checks here
    assert "unitablate cache:" in _run(day, "-vv").stdout.str()  # how it ran: -vv


def test_discover_takes_the_conftest_fixture_names(day: pytest.Pytester) -> None:
    """The same conftest that serves the spec serves discovery: no second module of
    import paths."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_unitablate", "discover", "--model", "my_model",
         "--data", "my_data", "--layer", "hidden", "--classes", "zero,one,two,three",
         "--out", "specs/starter.yaml"], cwd=day.path, capture_output=True, text=True,
        timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (day.path / "specs" / "starter.yaml").read_text()
    assert "model: my_model" in text and "data: my_data" in text and "units: [" in text
    assert not [p for p in day.path.iterdir() if p.name.startswith("unitablate_discover_")]
    assert proc.stdout.startswith("wrote specs/starter.yaml")  # no pytest output around it
    # every class's own accuracy is guarded, each with what was measured: a model that
    # forgot class one fails there, and the failure page shows the recorded value
    assert "one: {min_accuracy: " in text and "# recorded: measured 100.0%" in text
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FORGET": "1"}
    forgot = subprocess.run(
        [sys.executable, "-m", "pytest", "--unitablate-spec", "specs/starter.yaml", "-p",
         "no:randomly", "--unitablate-html", "f.html"], cwd=day.path, capture_output=True,
        text=True, timeout=300, env=env)
    assert forgot.returncode == 1, forgot.stdout[-2000:]
    assert "hidden-any one: accuracy 40.0%, needs >= " in forgot.stdout
    assert "when recorded: measured 100.0%" in (day.path / "f.html").read_text()
    again = subprocess.run(
        [sys.executable, "-m", "pytest_unitablate", "discover", "--model", "my_model",
         "--data", "my_data", "--layer", "hidden", "--out", "specs/starter.yaml"],
        cwd=day.path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stdout == ""  # checked before any fixture loads
    assert "specs/starter.yaml exists; pass --force" in again.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "pytest_unitablate", "discover", "--model", "no_such_model",
         "--data", "my_data", "--layer", "hidden", "--out", "specs/other.yaml"],
        cwd=day.path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "pytest could not give the fixtures no_such_model, my_data: fixture " \
           "'no_such_model' not found" in bad.stderr
    few = subprocess.run(
        [sys.executable, "-m", "pytest_unitablate", "discover", "--model", "my_model",
         "--data", "my_data", "--layer", "hidden", "--classes", "a,b", "--out",
         "specs/few.yaml"], cwd=day.path, capture_output=True, text=True, timeout=300)
    assert few.returncode == 2 and "Traceback" not in few.stderr
    assert "error: --classes names 2 classes, but the data's labels and the model's " \
           "outputs reach class 3" in few.stderr
    assert not (day.path / "specs" / "few.yaml").exists()
    missing = subprocess.run(
        [sys.executable, "-m", "pytest_unitablate", "discover", "--model", "my_model",
         "--data", "my_data", "--layer", "hidden", "--out", "specs/gone.yaml"],
        cwd=day.path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "MODEL_WEIGHTS": "no_such_weights.pt"})
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "error: discovery stopped: FileNotFoundError: " in missing.stderr
    assert "no_such_weights.pt" in missing.stderr
