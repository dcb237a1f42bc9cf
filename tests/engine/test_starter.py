"""discover over several models: a starter spec calibrated over all of them, and its
calibration file, through the engine and from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from pytest_unitablate import run_spec
from pytest_unitablate.engine.starter import discover_calibrated
from pytest_unitablate.spec.loader import load_spec
from pytest_unitablate.verdicts.calibration import calibration_path

#: per variant ("retrain"): how much of each class's logit bypasses the hidden units, and
#: a hidden unit switched off by its weight (its class then rides on the bypass alone)
ALPHAS = {0: [0.05, 0.3, 0.1, 1.0], 1: [0.06, 0.2, 0.3, 1.0], 2: [0.07, 0.5, 0.2, 1.0]}


class Bypass(nn.Module):
    """``logits = hidden(x) + alpha * x``, ``hidden`` the identity: ablating hidden unit k
    leaves class k its ``alpha_k`` share. Unit 3 is switched off in every variant: class d
    rides on the bypass alone (no unit carries it); ``dead`` switches off more."""

    def __init__(self, alpha: list[float], dead: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(4))
            for unit in (3, *dead):
                self.hidden.weight[unit, unit] = 0.0
        self.alpha = nn.Parameter(torch.tensor(alpha), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(x) + self.alpha * x


def data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(800, 4, generator=g).abs()
    y = x.argmax(1)
    flip = torch.rand(800, generator=g) < 0.1  # not 100% right
    y[flip] = torch.randint(0, 4, (int(flip.sum()),), generator=g)
    return [(x[i:i + 200], y[i:i + 200]) for i in range(0, 800, 200)]


def test_the_starter_spec_holds_on_every_reference_and_names_what_it_left_out(
        tmp_path: Path) -> None:
    out = tmp_path / "starter.yaml"
    refs = [Bypass(ALPHAS[v]).eval() for v in (0, 1, 2)]
    text = discover_calibrated(refs, data(), ["hidden"], out, model_ref="my_model",
                               data_ref="my_data", classes=["a", "b", "c", "d"])
    assert out.read_text() == text
    spec = load_spec(out)
    assert (spec.model, spec.data) == ("my_model", "my_data")
    kinds = {(str(e.target), k.kind): k.threshold for c in spec.checks
             for e in c.expectations for k in e.constraints}
    assert all(t is not None for t in kinds.values())  # nothing null is written
    # class d rides on the bypass in every model: no unit carries it, nothing to guard
    assert ("d", "min_drop") not in kinds and ("d", "min_logprob_drop") not in kinds
    assert ("d", "min_accuracy") in kinds  # but it must stay recognised
    assert ("a", "min_logprob_drop") in kinds and ("overall", "max_drop") in kinds
    line_d = next(line for line in text.splitlines() if line.lstrip().startswith("d:"))
    assert "unguardable: min_drop" in line_d and "min_logprob_drop" in line_d
    assert "# calibrated" not in text  # the comments say what was measured instead
    file = json.loads(calibration_path(out).read_text())
    assert len(file["models"]) == 3
    for i, model in enumerate(refs):
        run = run_spec(out, fixtures={"my_model": model, "my_data": data()})
        assert run.ok, (i, run.text())
    # a reference of another recipe (the hidden unit of class a switched off) fails
    broken = Bypass([1.05, 0.2, 0.3, 1.0], dead=(0,)).eval()
    run = run_spec(out, fixtures={"my_model": broken, "my_data": data()})
    assert {r["id"] for r in run.failed} >= {"hidden-any-a-min_logprob_drop"}


def test_without_class_names_the_targets_are_indices_and_a_failure_leaves_nothing(
        tmp_path: Path) -> None:
    out = tmp_path / "s.yaml"
    refs = [Bypass(ALPHAS[v]).eval() for v in (0, 1, 2)]
    text = discover_calibrated(refs, data(), ["hidden"], out, model_ref="m", data_ref="d")
    assert "classes:" not in text and "\n        0: {" in text
    run = run_spec(out, fixtures={"m": refs[0], "d": data()})
    assert run.ok, run.text()
    accuracy = next(r for r in run.records if r["constraint"] == "min_accuracy")
    # a class's own accuracy: its interval is the accuracy's, and no drop was measured
    assert accuracy["drop"] is None and accuracy["ablated"] is None
    assert accuracy["ci_low"] < accuracy["baseline"] < accuracy["ci_high"]
    bad = tmp_path / "t.yaml"
    with pytest.raises(ValueError, match=r"measuring reference model 1 of 3: .*no layer"):
        discover_calibrated(refs, data(), ["hiden"], bad, model_ref="m", data_ref="d")
    assert not bad.exists() and not calibration_path(bad).exists()


def test_fewer_than_three_models_and_an_existing_file_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "s.yaml"
    with pytest.raises(ValueError, match="at least 3 reference models"):
        discover_calibrated([Bypass(ALPHAS[0])] * 2, data(), ["hidden"], out,
                            model_ref="m", data_ref="d")
    out.write_text("mine\n")
    with pytest.raises(FileExistsError, match="--force"):
        discover_calibrated([Bypass(ALPHAS[v]) for v in (0, 1, 2)], data(), ["hidden"],
                            out, model_ref="m", data_ref="d")
    assert out.read_text() == "mine\n"


def test_the_command_line_takes_several_models(tmp_path: Path) -> None:
    (tmp_path / "refs.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_starter import ALPHAS, Bypass, data
        def seed0(): return Bypass(ALPHAS[0]).eval()
        def seed1(): return Bypass(ALPHAS[1]).eval()
        def seed2(): return Bypass(ALPHAS[2]).eval()
        def batches():  # a generator function: replayed by calling it again
            yield from data()
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_unitablate", "discover", "--model", "refs:seed0",
         "--model", "refs:seed1", "--model", "refs:seed2", "--data", "refs:batches",
         "--layer", "hidden", "--classes", "a,b,c,d", "--spec-model", "my_model",
         "--out", "s.yaml"], cwd=tmp_path, capture_output=True, text=True, check=False,
        env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "calibrated over 3 models" in proc.stdout
    assert (tmp_path / "s.yaml.calibration.json").exists()
    assert "model: my_model" in (tmp_path / "s.yaml").read_text()


SPEC = """\
unitablate: 1
model: my_model
data: my_data
classes: [a, b, c, d]
checks:
  - layer: hidden
    any_unit:
      expect:
        a: {min_logprob_drop: null}
        d: {min_drop: null}          # no unit carries d: unguardable
"""


def test_run_spec_calibrates_and_says_what_it_refused(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TF_BUILD"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    for v in (0, 1, 2):
        run = run_spec(path, fixtures={"my_model": Bypass(ALPHAS[v]).eval(),
                                       "my_data": data()}, record_mode="calibrate")
    assert any("(3 model(s) recorded)" in line for line in run.recorded)
    assert len(run.unguardable) == 1 and "hidden-any-d-min_drop: unguardable" in \
        run.unguardable[0]
    assert {r["id"]: r["unguardable"] is not None for r in run.records} == {
        "hidden-any-a-min_logprob_drop": False, "hidden-any-d-min_drop": True}
    kinds = {(str(e.target), k.kind): k.threshold for c in load_spec(path).checks
             for e in c.expectations for k in e.constraints}
    assert kinds[("a", "min_logprob_drop")] is not None and kinds[("d", "min_drop")] is None
    # the guard run: the empty, unguardable constraint says so (not "record it with new")
    plain = run_spec(path, fixtures={"my_model": Bypass(ALPHAS[1]).eval(), "my_data": data()})
    d = next(i for i in plain.items if i.id == "hidden-any-d-min_drop")
    assert d.outcome == "failed"
    assert str(d.message) == (
        f"hidden-any-d-min_drop: unguardable over 3 models\n"
        f"{path}:10: hidden-any-d-min_drop: unguardable over 3 models (measured 0.0-0.0 pp)\n"
        "  the calibrated min_drop would be -1.3 pp: a min_drop of -1.3 pp (at or below 0) "
        "passes whatever the ablation does.\n"
        "  Honest retrains already reach what a destroyed unit shows: such a guard would "
        "fail them or catch nothing.\n"
        # a layer-wide check: not told to use any_unit
        "  What could guard it: min_logprob_drop instead of an accuracy drop (it varies less "
        "between retrains); another layer, or more reference models if one of them is an "
        "outlier.\n"
        "  Remove this constraint from the spec, or guard it as suggested.")
    a = next(i for i in plain.items if i.id == "hidden-any-a-min_logprob_drop")
    assert a.outcome == "passed" and a.record["calibration_models"] == 3
    monkeypatch.setenv("CI", "true")
    with pytest.raises(ValueError, match="record mode refused: CI is set"):
        run_spec(path, fixtures={"my_model": Bypass(ALPHAS[0]), "my_data": data()},
                 record_mode="calibrate")
    with pytest.raises(ValueError, match="must be one of"):
        run_spec(path, fixtures={"my_model": Bypass(ALPHAS[0]), "my_data": data()},
                 record_mode="calibrated", record_force=True)


STARTER_GOLDEN = Path(__file__).parent / "golden" / "starter.yaml"


class TwoLayers(Bypass):
    """The same network with a second layer of units after ``hidden``."""

    def __init__(self, alpha: list[float]) -> None:
        super().__init__(alpha)
        self.after = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(self.hidden(x)) + self.alpha * x  # type: ignore[no-any-return]


def test_the_starter_spec_reads_as_the_golden_file(tmp_path: Path) -> None:
    """The whole starter spec, line by line: its header, its checks, what each target's
    comment says was measured and left out, and the checks left as comments. Log-prob
    values (float sums) are masked; accuracies over 800 examples are exact. After an
    intended change: ``UNITABLATE_REGOLD=1 pytest tests/engine/test_starter.py``."""
    import os
    import re

    refs = [TwoLayers(ALPHAS[v]).eval() for v in (0, 1, 2)]
    text = discover_calibrated(refs, data(), ["hidden", "after"], tmp_path / "s.yaml",
                               model_ref="my_model", data_ref="my_data",
                               classes=["a", "b", "c", "d"])
    masked = re.sub(r"(logprob_drop: )-?\d+\.\d+", r"\1<x>",
                    re.sub(r"-?\d+\.\d{3}( nats|-)", r"<x>\1", text))
    if os.environ.get("UNITABLATE_REGOLD"):
        STARTER_GOLDEN.write_text(masked)
    assert masked.splitlines() == STARTER_GOLDEN.read_text().splitlines()
