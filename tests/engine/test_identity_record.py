"""What an ``identity: signature`` item puts in its record, its failure text and its
warnings, field by field, through ``run_spec`` (no pytest subprocess).

The similarities are checked against the core's own profiles and cosine
(:func:`damage_profiles`, :func:`cosine_matrix`), not against the engine's output; the
MLP is the one of ``tests/engine/test_matching.py`` (hidden unit k detects class k).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_matching import PERM, _data, _mlp

from pytest_unitablate import run_spec
from pytest_unitablate.core import identity
from pytest_unitablate.spec.signatures import Signatures, write_signatures

CLASSES = ("zero", "one", "two", "three")

SPEC = """\
unitablate: 1
model: model
data: data
{classes}{signatures}checks:
  - layer: "1"
    units: [1, 2]
    identity: {{by: signature, min_similarity: 0.5}}
    expect:
      one: {{min_drop: 99%}}  # recorded: measured 61.5 pp
  - layer: "1"
    units: [2]
    identity: signature
    expect:
      two: {{max_drop: 1%}}
"""


def _profiles() -> Any:
    return identity.damage_profiles(_mlp(), _data(), "1", num_classes=4)


def _write(tmp_path: Path, recorded: dict[int, Any], data_sha256: str = "",
           classes: bool = True) -> Path:
    sig = Signatures(layers={"1": {u: tuple(float(v) for v in p)
                                   for u, p in recorded.items()}},
                     classes=CLASSES, data_sha256=data_sha256)
    sha = write_signatures(tmp_path / "spec.signatures.json", sig)
    path = tmp_path / "spec.yaml"
    text = SPEC if classes else SPEC.replace("one:", "1:").replace("two:", "2:")
    path.write_text(text.format(
        classes="classes: [zero, one, two, three]\n" if classes else "",
        signatures=f"signatures: {{file: spec.signatures.json, sha256: {sha}}}\n"))
    return path


def _by_id(run: Any) -> dict[str, dict[str, Any]]:
    """Each item's whole record (report fields and the engine's own), its outcome and
    its failure text as ``reason``."""
    return {i.id: {**i.record, "outcome": i.outcome, "reason": str(i.message or "")}
            for i in run.items}


def test_a_moved_unit_is_reported_with_its_similarity_mapping_and_recorded_drop(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    profiles = _profiles()
    # recorded profiles a little off the model's own: the similarities are not 1
    recorded = {u: profiles[u] + rng.normal(0, 0.05, profiles[u].shape) for u in (1, 2)}
    spec = _write(tmp_path, recorded)
    run = run_spec(spec, fixtures={"model": _mlp(permute=True), "data": _data()})
    one = _by_id(run)["1-u1+2-one-min_drop"]
    moved = [PERM.index(u) for u in (1, 2)]
    now = identity.damage_profiles(_mlp(permute=True), _data(), "1", num_classes=4)
    cos = identity.cosine_matrix(np.stack([recorded[1], recorded[2]]), now)
    want = [round(float(cos[i, moved[i]]), 4) for i in range(2)]
    assert one["matched_units"] == moved and one["similarity"] == want
    assert want != [round(float(cos[i, moved[i]]), 5) for i in range(2)]  # rounded to 4
    assert one["recorded_drop"] == pytest.approx(0.615)
    assert one["mapping"] == (f"unit 1 -> unit {moved[0]} (similarity {want[0]:.2f}); "
                              f"unit 2 -> unit {moved[1]} (similarity {want[1]:.2f})")
    assert one["identity"] == "signature" and one["recorded_units"] == [1, 2]
    assert one["min_similarity"] == 0.5 and one["dead_units"] is None
    assert one["outcome"] == "failed"
    reason = one["reason"].splitlines()
    notes = [line.strip() for line in reason]
    first = next(i for i, line in enumerate(notes) if line.startswith("identity: "))
    assert notes[first] == f"identity: signature: {one['mapping']}"
    assert f"drop when recorded (recorded units 1, 2): {61.5:.1f} pp" in " ".join(notes)
    # no drop recorded in the spec: no such note
    two = _by_id(run)["1-u2-two-max_drop"]
    assert two["recorded_drop"] is None and "drop when recorded" not in two["reason"]
    assert two["mapping"] == f"unit 2 -> unit {moved[1]} (similarity {want[1]:.2f})"


def test_signatures_of_other_data_warn_once_per_spec(tmp_path: Path) -> None:
    profiles = _profiles()
    spec = _write(tmp_path, {1: profiles[1], 2: profiles[2]}, data_sha256="ab" * 32)
    run = run_spec(spec, fixtures={"model": _mlp(), "data": _data()})
    warned = [w for item in run.items for w in item.warnings]
    assert len(warned) == 1, warned
    assert warned[0].startswith(f"{spec}:5: the signatures were recorded on other "
                                "evaluation data (fingerprint abababababab...)")
    same = _write(tmp_path, {1: profiles[1], 2: profiles[2]})  # no fingerprint recorded
    run = run_spec(same, fixtures={"model": _mlp(), "data": _data()})
    assert not [w for item in run.items for w in item.warnings]


def test_recording_a_missing_signature_keeps_what_the_sidecar_needs(tmp_path: Path) -> None:
    profiles = _profiles()
    for classes in (True, False):
        spec = _write(tmp_path, {2: profiles[2]}, classes=classes)  # unit 1 is missing
        run = run_spec(spec, fixtures={"model": _mlp(), "data": _data()},
                       record_mode="new", record_force=True)
        items = _by_id(run)
        one = next(r for i, r in items.items() if i.startswith("1-u1+2-"))
        assert one["signature_classes"] == (list(CLASSES) if classes else None)
        baseline = next(r for i, r in items.items() if i.startswith("1-u2-"))
        assert len(one["signature_data_sha256"]) == 64
        assert one["signatures_file"] == str(tmp_path / "spec.signatures.json")
        assert set(one["signature"]) == {"1", "2"}
        assert one["signature"]["1"] == pytest.approx(list(map(float, profiles[1])), abs=1e-5)
        assert "matched_units" not in one and "matched_units" in baseline
        assert one["outcome"] == "failed"
        assert ("identity: signature: no signature recorded yet for unit(s) [1]; this run "
                "takes the indices as they are and record mode writes the signatures"
                ) in " ".join(line.strip() for line in one["reason"].splitlines())


def test_recording_replaces_a_sidecar_the_spec_does_not_name(tmp_path: Path) -> None:
    """A sidecar left from an earlier recording the spec has no entry for: a plain run
    refuses it (located), record mode ignores it and records anew."""
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(classes="classes: [zero, one, two, three]\n",
                                signatures=""))
    (tmp_path / "spec.signatures.json").write_text("{}")
    fixtures = {"model": _mlp(), "data": _data()}
    plain = _by_id(run_spec(path, fixtures=fixtures))["1-u1+2-one-min_drop"]
    assert plain["outcome"] == "failed"
    assert f"{path}:8: " in plain["reason"]
    assert "exists but the spec has no signatures: entry" in plain["reason"]
    recording = _by_id(run_spec(path, fixtures=fixtures, record_mode="new",
                                record_force=True))["1-u1+2-one-min_drop"]
    assert set(recording["signature"]) == {"1", "2"}


def test_the_recorded_sidecar_holds_the_profiles_and_where_they_were_measured(
        tmp_path: Path) -> None:
    import torch

    from pytest_unitablate.spec.loader import load_spec
    from pytest_unitablate.spec.signatures import read_signatures

    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(classes="classes: [zero, one, two, three]\n", signatures=""))
    run = run_spec(path, fixtures={"model": _mlp(), "data": _data()}, record_mode="new",
                   record_force=True)
    one = _by_id(run)["1-u1+2-one-min_drop"]
    spec = load_spec(path)
    sidecar = read_signatures(spec.signatures_path(), spec.signatures_sha256)
    assert sidecar is not None and sidecar.classes == CLASSES
    assert sidecar.data_sha256 == one["signature_data_sha256"]
    assert sidecar.meta["torch_version"] == str(torch.__version__)
    assert sidecar.meta["weights_sha256"] == one["weights_sha256"]
    profiles = _profiles()
    for unit in (1, 2):  # stored to four decimals
        assert sidecar.units("1")[unit] == pytest.approx(list(map(float, profiles[unit])),
                                                         abs=6e-5)
