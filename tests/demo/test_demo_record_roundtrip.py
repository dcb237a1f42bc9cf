"""Record -> re-run -> pass on the real demo spec, with every comment of the spec intact."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_unitablate.plugin.record_mode import CI_VARIABLES
from pytest_unitablate.spec.loader import load_spec

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in CI_VARIABLES}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "--rootdir", str(cwd), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _copy_sidecar(name: str, tmp_path: Path) -> None:
    """The spec's signatures sidecar goes with it (identity: signature checks)."""
    sidecar = ROOT / "specs" / name.replace(".yaml", ".signatures.json")
    if sidecar.exists():
        shutil.copy(sidecar, tmp_path / sidecar.name)


def test_record_new_writes_the_shipped_signatures_byte_for_byte(tmp_path: Path) -> None:
    """Without its signatures (no sidecar, no signatures: entry), record mode new on the
    reference model writes back exactly the shipped sidecar and spec."""
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    original = (ROOT / "specs" / "resnet.yaml").read_text()
    stripped = re.sub(r"^signatures: .*\n", "", original, flags=re.MULTILINE)
    assert stripped != original
    spec = tmp_path / "resnet.yaml"
    spec.write_text(stripped)
    plain = _pytest(tmp_path, "--unitablate-spec", "resnet.yaml")
    assert plain.returncode == 1 and "no signature of layer3.0 unit(s) [0] is recorded" in \
        plain.stdout, plain.stdout[-2000:]
    new = _pytest(tmp_path, "--unitablate-spec", "resnet.yaml", "--unitablate-record-mode=new")
    assert new.returncode == 0, new.stdout[-2000:]
    assert "8 unit signature(s) recorded" in new.stdout
    assert spec.read_text() == original
    shipped = (ROOT / "specs" / "resnet.signatures.json").read_text()
    assert (tmp_path / "resnet.signatures.json").read_text() == shipped


def test_record_new_then_all_then_rerun_passes_with_comments_intact(tmp_path: Path) -> None:
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    _copy_sidecar("resnet.yaml", tmp_path)
    original = (ROOT / "specs" / "resnet.yaml").read_text()
    assert "four: {min_drop: 40%}" in original
    spec = tmp_path / "resnet.yaml"
    spec.write_text(original.replace("four: {min_drop: 40%}", "four: {min_drop: null}", 1))

    # (that a null threshold fails without record mode is a fast plugin test)
    new = _pytest(tmp_path, "--unitablate-spec", "resnet.yaml", "--unitablate-record-mode=new")
    assert new.returncode == 0, new.stdout[-2000:]
    assert "1 threshold(s) recorded/updated" in new.stdout
    text = spec.read_text()
    comments = [line.strip() for line in original.splitlines() if line.strip().startswith("#")]
    assert all(c in text for c in comments)
    assert "min_drop: null" not in text and "recorded: measured 50.0 pp" in text

    everything = _pytest(tmp_path, "--unitablate-spec", "resnet.yaml",
                         "--unitablate-record-mode=all")
    assert everything.returncode == 0, everything.stdout[-2000:]
    recorded = load_spec(spec)
    assert dict(recorded.provenance)["device"] == "cpu"
    assert all(c in spec.read_text() for c in comments)

    again = _pytest(tmp_path, "--unitablate-spec", "resnet.yaml")
    assert again.returncode == 0, again.stdout[-2000:]
    assert "25 passed" in again.stdout
    # Recorded thresholds are confidence bounds: the fine-tuned regression still fails them.
    caught = _pytest(tmp_path, "--unitablate-spec", "resnet.yaml",
                     "--demo-checkpoint", "resnet-finetuned")
    assert caught.returncode == 1
    assert "layer3.0-u0-four-min_drop" in caught.stdout


@pytest.mark.parametrize("name", ["resnet.yaml", "alexnet.yaml"])
def test_record_all_repairs_a_sabotaged_demo_spec(tmp_path: Path, name: str) -> None:
    """Every min_drop set to 99% (most of which the classes' examples cannot support):
    record mode all measures and rewrites every one, the run passes, a plain re-run passes."""
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    _copy_sidecar(name, tmp_path)
    original = (ROOT / "specs" / name).read_text()
    sabotaged = re.sub(r"min_drop: [0-9.]+%", "min_drop: 99%", original)
    count = sabotaged.count("min_drop: 99%")
    assert count >= 8
    spec = tmp_path / name
    spec.write_text(sabotaged)
    broken = _pytest(tmp_path, "--unitablate-spec", name)
    assert broken.returncode == 1
    repaired = _pytest(tmp_path, "--unitablate-spec", name, "--unitablate-record-mode=all")
    assert repaired.returncode == 0, repaired.stdout[-3000:]
    assert "NOT recorded" not in repaired.stdout
    text = spec.read_text()
    assert "min_drop: 99%" not in text
    assert text.count("# recorded: measured") >= count
    again = _pytest(tmp_path, "--unitablate-spec", name)
    assert again.returncode == 0, again.stdout[-3000:]
