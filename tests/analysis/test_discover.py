"""Discovery turns a model into a spec that passes on it (the demo ResNet, real data)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_unitablate.spec.ids import item_ids
from pytest_unitablate.spec.loader import load_spec

ROOT = Path(__file__).resolve().parents[2]
CLASSES = "zero,one,two,three,four,five,six,seven,eight,nine"


@pytest.mark.slow
def test_discovered_spec_is_valid_and_passes_on_its_model(tmp_path: Path) -> None:
    out = tmp_path / "starter.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_unitablate", "discover",
         "--model", "unitablate_demo.fixtures:resnet", "--data",
         "unitablate_demo.fixtures:test_data", "--layer", "layer3.0", "--layer", "layer2.1",
         "--classes", CLASSES, "--top", "4", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    spec = load_spec(out)
    modes = [c.mode for c in spec.checks]
    assert modes.count("units") == 4 and "every_unit" in modes and "any_unit" in modes
    assert len(item_ids(spec)) >= 10
    kinds = [k.kind for c in spec.checks if c.mode == "units" for e in c.expectations
             for k in e.constraints]
    assert kinds.count("min_logprob_drop") == 4  # both measures on each named unit's class
    text = out.read_text()
    # a weak accuracy bound is left out, and the comment says why
    assert kinds.count("min_drop") == 4 - text.count("# not written: a min_drop")
    run = subprocess.run([sys.executable, "-m", "pytest", "--unitablate-spec", str(out),
                          "-p", "no:cacheprovider", "-q"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:]
    again = subprocess.run([sys.executable, "-m", "pytest_unitablate", "discover",
                            "--model", "unitablate_demo.fixtures:resnet", "--data",
                            "unitablate_demo.fixtures:test_data", "--layer", "layer3.0",
                            "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr


def test_bad_reference_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_unitablate", "discover", "--model", "nomodule:x",
         "--data", "unitablate_demo.fixtures:test_data", "--layer", "conv5",
         "--out", str(tmp_path / "s.yaml")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error: No module named 'nomodule'" in proc.stderr
    assert not (tmp_path / "s.yaml").exists()


def test_discover_over_heads_and_token_features(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A transformer: heads of an attention layer, and neurons of an N,T,C output, which
    discover refuses to guess the axis of (it would scan token positions)."""
    import transformer_source

    from pytest_unitablate import run_spec
    from pytest_unitablate.analysis.discover import discover
    from pytest_unitablate.errors import ConfigError

    (tmp_path / "tinyvit.py").write_text(transformer_source.SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"outputs shape \(N, 6, 16\), which is not"):
        discover("tinyvit:model", "tinyvit:data", ["encoder.layers.0"], tmp_path / "a.yaml")
    text = discover("tinyvit:model", "tinyvit:data", ["encoder.layers.0"],
                    tmp_path / "tokens.yaml", channel_dim=-1, top=2)
    assert "channel_dim: -1" in text
    heads = discover("tinyvit:model", "tinyvit:data", ["encoder.layers.1.self_attn"],
                     tmp_path / "heads.yaml", unit="head", top=2, identity=True)
    assert "unit: head" in heads and "every_unit" in heads
    for name in ("tokens.yaml", "heads.yaml"):
        run = run_spec(name)
        assert run.ok, run.text()
    assert {r["unit"] for r in run_spec("heads.yaml").records} == {"head"}


def test_a_spec_without_named_units_says_why() -> None:
    from pytest_unitablate.analysis.discover import render_spec

    text = render_spec("m:f", "d:f", None, [], {"layer": 0.05}, 0.95)
    assert "# No named-unit checks: no unit's class drop has a 95% lower bound" in text
    assert "every_unit" in text
