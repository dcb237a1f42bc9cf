"""A guard too weak to record, on the demo ViT: three MLP neurons of the first block
together cost class eight 8.6 pp over its 58 test examples, with a 95% interval from 0.2 to
18.9 pp. A recorded ``min_drop`` would be about 0.1 pp: one example meets it, and a
fine-tune that kept a tenth of the effect would pass. The engine refuses to write it and
says what would make a guard (the plugin's record mode shows the same text)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_unitablate import run_spec
from pytest_unitablate.plugin.record_mode import CI_VARIABLES
from unitablate_demo import fixtures

ROOT = Path(__file__).resolve().parents[2]


def test_the_vit_neurons_weak_bound_is_refused_with_what_to_do(tmp_path: Path) -> None:
    spec = tmp_path / "vit_weak.yaml"
    spec.write_text(textwrap.dedent("""\
        unitablate: 1
        model: model
        data: data
        classes: [zero, one, two, three, four, five, six, seven, eight, nine]
        checks:
          - layer: encoder.layers.encoder_layer_0.mlp.1
            channel_dim: -1
            units: [1, 12, 23]
            expect:
              eight: {min_drop: null}
        """))
    run = run_spec(spec, fixtures={"model": fixtures.vit(), "data": fixtures.test_data()})
    (item,) = run.items
    assert item.outcome == "failed"
    text = item.message or ""
    first, second = text.splitlines()[:2]
    assert first == ("encoder.layers.encoder_layer_0.mlp.1-u1+12+23 eight: drop 8.6 pp on 58 "
                     "examples is too uncertain to guard: not recorded")
    assert "95% CI [0.2, 18.9] pp, n=58), but a guard would be weak" in second
    assert "one example of 58 (1.7 pp) meets it" in text
    assert "To guard it: evaluate on about " in text
    assert "guard it with min_logprob_drop: the same ablation shows log-prob drop 0.189 " \
        "nats" in text


@pytest.mark.slow
def test_record_mode_refuses_it_and_leaves_the_spec_as_it_was(tmp_path: Path) -> None:
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    spec = tmp_path / "vit_weak.yaml"
    spec.write_text(textwrap.dedent("""\
        unitablate: 1
        model: digits_vit
        data: digits_test
        classes: [zero, one, two, three, four, five, six, seven, eight, nine]
        checks:
          - layer: encoder.layers.encoder_layer_0.mlp.1
            channel_dim: -1
            units: [1, 12, 23]
            expect:
              eight: {min_drop: null, min_logprob_drop: null}
        """))
    before = spec.read_bytes()
    env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          "--rootdir", str(tmp_path), "--unitablate-spec", "vit_weak.yaml",
                          "--unitablate-record-mode=new"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stdout[-3000:]
    out = run.stdout
    assert "drop 8.6 pp on 58 examples is too uncertain to guard: not recorded" in out
    assert "log-prob drop 0.189 nats on 58 examples is too uncertain to guard" in out
    assert "2 threshold(s) NOT recorded: the bound would guard too little" in out
    assert spec.read_bytes() == before
