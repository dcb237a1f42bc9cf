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
