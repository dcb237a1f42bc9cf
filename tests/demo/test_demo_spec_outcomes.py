"""The README's main job: the demo specs through the real plugin, on every shipped checkpoint.

The expected outcome of every item comes from ``unitablate_demo/checkpoints/
expected_outcomes.json`` (written by ``python -m unitablate_demo.outcomes`` from plain-hook
measurements, independent of the plugin, with its own signature matching): the reference
passes everything, the fine-tuned model fails exactly the checks on its silenced units
(mapped to themselves), and on the retrained model the named units are matched to the
units the oracle matches, while every layer-wide check passes.

``run_spec``, in a process that cannot import pytest, gives every item the same record
as the plugin (the prefix engine's measured plan aside).

Both run with ``UNITABLATE_DEMO_THREADS`` torch threads (default 1; ``make test-threads``
runs these tests again with 2, as CI does): outcomes and matched units must not depend on
the thread count, while float digits of intervals and profiles may (docs/reproducibility.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from no_pytest import env_without_pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = json.loads((ROOT / "unitablate_demo/checkpoints/expected_outcomes.json").read_text())
CASES = [(spec, ckpt) for spec, by_ckpt in sorted(EXPECTED["specs"].items())
         for ckpt in sorted(by_ckpt)]

pytestmark = pytest.mark.slow

#: torch threads of every run here (OMP_NUM_THREADS of the subprocesses)
THREADS = int(os.environ.get("UNITABLATE_DEMO_THREADS", "1"))


def _env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**(os.environ if base is None else base), "OMP_NUM_THREADS": str(THREADS)}

#: run_spec on one demo spec and checkpoint, the demo's fixtures given by name
RUN_SPEC = """
import json, sys
from pytest_unitablate import run_spec
from unitablate_demo import fixtures as f
spec, checkpoint = sys.argv[1:3]
model = f.checkpoint(checkpoint)
run = run_spec(spec, fixtures={"digits_resnet": model, "digits_alexnet": model,
                               "digits_vit": model, "digits_test": f.test_data(),
                               "digits_ranking": f.ranking_data()})
print(json.dumps(run.records))
"""


@pytest.mark.parametrize(("spec", "checkpoint"), CASES, ids=[f"{Path(s).stem}-{c}"
                                                             for s, c in CASES])
def test_plugin_outcomes_match_the_expected_outcomes(spec: str, checkpoint: str,
                                                     tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--unitablate-spec", spec, "--demo-checkpoint",
         checkpoint, "--unitablate-report", str(report), "-p", "no:cacheprovider", "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env(),
    )
    run_facts = json.loads((tmp_path / "report.run.json").read_text())
    assert run_facts["torch_threads"] == [THREADS]
    expected = EXPECTED["specs"][spec][checkpoint]
    assert proc.returncode == (1 if expected["failed"] else 0), proc.stdout[-3000:]
    got = {r["id"]: r["outcome"] for r in json.loads(report.read_text())["items"]}
    want = {i["id"]: i["outcome"] for i in expected["items"]}
    assert got == want
    # identity: signature: the plugin matched the units the independent oracle matched
    items = {r["id"]: r for r in json.loads(report.read_text())["items"]}
    for i in expected["items"]:
        if i.get("matched_units") is not None:
            assert items[i["id"]]["matched_units"] == i["matched_units"], i["id"]
            assert items[i["id"]]["similarity"] == pytest.approx(i["similarity"], abs=1e-3)
            noun = "head" if items[i["id"]]["unit"] == "head" else "unit"
            gone = f"{i['id']}: no {noun} of {i['layer']} matches the recorded {noun}"
            assert (gone in proc.stdout) == i["no_match"], i["id"]
    named_fail = [i for i in expected["items"] if i["outcome"] == "failed"]
    if checkpoint.endswith("retrained"):
        assert named_fail and all(i["mode"] == "units" for i in named_fail)
        assert all(i["outcome"] == "passed" for i in expected["items"] if i["mode"] != "units")
    if checkpoint == "resnet-finetuned":
        assert sorted(i["id"] for i in named_fail) == [
            "layer3.0-u0-four-min_drop", "layer3.0-u15-six-min_drop"]
    if expected["failed"]:
        # the hint reproduces this run: same spec, same checkpoint
        assert (f"To re-record: pytest --unitablate-spec {spec} --demo-checkpoint {checkpoint}"
                in proc.stdout)
    if spec == "specs/vit.yaml":  # (run_spec on transformers: tests/engine; time is short)
        return
    engine = subprocess.run([sys.executable, "-c", RUN_SPEC, spec, checkpoint], cwd=ROOT,
                            env=_env(env_without_pytest(tmp_path / "blocker")), capture_output=True,
                            text=True, timeout=600)
    assert engine.returncode == 0, engine.stderr[-3000:]
    assert json.loads(engine.stdout.strip().splitlines()[-1]) == \
        json.loads(report.read_text())["items"]
