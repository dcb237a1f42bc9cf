"""The training-loop example runs as a user runs it (and without pytest importable): the
guard trips on the flawed fine-tune with the failure text of the protected units."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from no_pytest import env_without_pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_training_example_stops_when_a_protected_unit_loses_its_class(
        tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "examples/guard_training.py"], cwd=ROOT,
                          env=env_without_pytest(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "before training: 5 items, 0 failed" in out
    assert "guard tripped after epoch" in out
    assert "FAILED examples/guard.yaml::layer3.0-u0-four-min_drop" in out
    assert "examples/guard.yaml:15: layer3.0-u0 (zero ablation): class 'four' must have" in out
    assert "cost: one guard evaluation" in out and "one training epoch" in out


@pytest.mark.slow
def test_the_training_example_passes_the_plain_recipe(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "examples/guard_training.py", "--no-flaw",
                           "--epochs", "3"], cwd=ROOT, env=env_without_pytest(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "epoch 3: loss" in proc.stdout and "tripped" not in proc.stdout
