"""Record -> re-run -> pass on the real demo spec, with every comment of the spec intact."""

from __future__ import annotations

import hashlib
import json
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


#: How far a re-recorded profile value may be from the shipped one. Profiles come from a
#: backward pass whose last float digits differ across CPUs and thread counts; the sidecar
#: rounds them to 1e-4 (``spec.signatures.PROFILE_DECIMALS``), so another machine's
#: recording differs by at most one rounding step, far below what the matching can feel.
PROFILE_TOLERANCE = 2e-4

#: A conftest that makes this process record as another CPU would: every profile value
#: off by a relative 1e-5 in its last digits (what an AMD EPYC gave against the machine the
#: demo was recorded on). Loaded with the demo's conftest.
OTHER_CPU = """
import numpy as np
import pytest_unitablate.core.identity as identity

_measured = identity.damage_profiles


def _as_on_another_cpu(*args, **kwargs):
    profiles = _measured(*args, **kwargs)
    noise = np.random.default_rng(7).standard_normal(profiles.shape)
    return profiles * (1 + 1e-5 * noise)


identity.damage_profiles = _as_on_another_cpu
"""


def _assert_same_sidecar(written: str, shipped: str) -> None:
    """Equal structure (layers, units, classes, data fingerprint) and every profile value
    within :data:`PROFILE_TOLERANCE`; each unit's top classes follow from its own profile."""
    from pytest_unitablate.spec.signatures import Signatures, top_classes

    new, old = Signatures.from_text(written), Signatures.from_text(shipped)
    assert (new.classes, new.data_sha256) == (old.classes, old.data_sha256)
    assert {k: sorted(v) for k, v in new.layers.items()} == \
        {k: sorted(v) for k, v in old.layers.items()}
    for layer, units in old.layers.items():
        for unit, profile in units.items():
            got = new.layers[layer][unit]
            assert max(abs(a - b) for a, b in zip(got, profile, strict=True)) <= \
                PROFILE_TOLERANCE, (layer, unit, got, profile)
    for doc in (json.loads(written), json.loads(shipped)):
        for units in doc["layers"].values():
            for entry in units.values():
                assert entry["top_classes"] == top_classes(entry["profile"], doc["classes"])


@pytest.mark.parametrize("machine", ["this", "other-cpu"])
def test_record_new_writes_the_shipped_signatures(tmp_path: Path, machine: str) -> None:
    """Without its signatures (no sidecar, no signatures: entry), record mode new on the
    reference model writes back the shipped sidecar (equal within the rounding of its
    profiles) and the shipped spec (equal but for the sidecar's sha256, which the spec
    records for the file actually written); also when the profiles' last digits come out
    differently, as on another CPU."""
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    if machine == "other-cpu":
        with (tmp_path / "conftest.py").open("a") as fh:
            fh.write(OTHER_CPU)
    original = (ROOT / "specs" / "resnet.yaml").read_text()
    stripped = re.sub(r"^signatures: .*\n", "", original, flags=re.MULTILINE)
    assert stripped != original
    spec = tmp_path / "resnet.yaml"
    spec.write_text(stripped)
    plain = _pytest(tmp_path, "--unitablate-spec", "resnet.yaml")
    # a spec whose signatures were never recorded does not fit the model yet: exit 2
    assert plain.returncode == 2 and "no signature of layer3.0 unit(s) [0] is recorded" in \
        plain.stdout, plain.stdout[-2000:]
    new = _pytest(tmp_path, "--unitablate-spec", "resnet.yaml", "--unitablate-record-mode=new")
    assert new.returncode == 0, new.stdout[-2000:]
    assert "8 unit signature(s) recorded" in new.stdout
    written = (tmp_path / "resnet.signatures.json").read_text()
    _assert_same_sidecar(written, (ROOT / "specs" / "resnet.signatures.json").read_text())
    sha = re.compile(r"sha256: [0-9a-f]{64}")
    assert sha.sub("sha256: X", spec.read_text()) == sha.sub("sha256: X", original)
    assert f"sha256: {hashlib.sha256(written.encode()).hexdigest()}" in spec.read_text()
    again = _pytest(tmp_path, "--unitablate-spec", "resnet.yaml")
    assert again.returncode == 0 and "25 passed" in again.stdout, again.stdout[-2000:]


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

    # (record mode's refusal of weak bounds is the test after the next: off here)
    everything = _pytest(tmp_path, "--unitablate-spec", "resnet.yaml",
                         "--unitablate-record-mode=all", "--unitablate-record-min-share=0")
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
    repaired = _pytest(tmp_path, "--unitablate-spec", name, "--unitablate-record-mode=all",
                       "--unitablate-record-min-share=0")
    assert repaired.returncode == 0, repaired.stdout[-3000:]
    assert "NOT recorded" not in repaired.stdout
    text = spec.read_text()
    assert "min_drop: 99%" not in text
    assert text.count("# recorded: measured") >= count
    again = _pytest(tmp_path, "--unitablate-spec", name)
    assert again.returncode == 0, again.stdout[-3000:]


def test_record_all_refuses_weak_bounds_on_the_demo_and_offers_the_logprob_guard(
        tmp_path: Path) -> None:
    """With the default share, record mode all leaves out the demo's bounds that keep less
    than half of their drop, lists them, and says that a log-prob bound would keep most."""
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    _copy_sidecar("resnet.yaml", tmp_path)
    spec = tmp_path / "resnet.yaml"
    spec.write_text((ROOT / "specs" / "resnet.yaml").read_text())
    before = spec.read_text()
    run = _pytest(tmp_path, "--unitablate-spec", "resnet.yaml", "--unitablate-record-mode=all")
    assert run.returncode == 1
    out = run.stdout
    assert "layer3.0-u6 nine: drop 21.7 pp on 60 examples is too uncertain to guard" in out
    assert "a min_drop of 10.6 pp keeps 48% of the measured drop of 21.7 pp" in out
    assert "guard it with min_logprob_drop: the same ablation shows log-prob drop" in out
    weak = re.search(r"unitablate: (\d+) threshold\(s\) NOT recorded: the bound would guard "
                     r"too little", out)
    assert weak is not None and int(weak.group(1)) >= 1
    text = spec.read_text()
    assert "nine: {min_drop: 15%}" in before and "nine: {min_drop: 15%}" in text  # kept
    assert text != before  # the strong ones were recorded
