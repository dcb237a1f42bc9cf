"""Record mode on the controller: turn item records into spec updates (torch-free).

Items measure; the controller decides which thresholds to write (by mode and outcome) and
writes them with :func:`pytest_unitablate.spec.rewrite.rewritten_spec`: per spec, the spec
and its signatures sidecar in one :func:`pytest_unitablate.atomic.atomic_write_all` (an
interrupt leaves both as they were or both rewritten).

Example::

    >>> rec = {"spec": "s.yaml", "outcome": "failed", "threshold": 0.3, "record_value": 0.12,
    ...        "drop": 0.2, "constraint": "min_drop", "check_index": 0, "mode_key": None,
    ...        "target_key": "seven"}
    >>> wanted(rec, "failed"), wanted(rec, "new")
    (True, False)
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pytest_unitablate.atomic import atomic_write_all
from pytest_unitablate.spec.rewrite import RecordError, ThresholdUpdate, rewritten_spec
from pytest_unitablate.spec.signatures import SignatureFileError, Signatures, sha256_text
from pytest_unitablate.verdicts.measure import writes

RecordMode = Literal["none", "new", "failed", "all"]
RECORD_MODES: tuple[RecordMode, ...] = ("none", "new", "failed", "all")
#: Environment variables that mean "this is a CI run" (record mode refuses unless forced).
CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "JENKINS_URL", "TF_BUILD")


def ci_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The name of the variable that marks a CI run, or ``None``.

    >>> ci_environment({"CI": "true"})
    'CI'
    >>> ci_environment({"CI": "false"}) is None
    True
    """
    env = os.environ if environ is None else environ
    for name in CI_VARIABLES:
        value = env.get(name, "")
        if value and value.lower() not in ("0", "false", "no"):
            return name
    return None


def wanted(record: Mapping[str, Any], mode: str) -> bool:
    """Whether record mode ``mode`` rewrites this item's threshold."""
    if record.get("record_value") is None:
        return False  # not measured (skipped, deselected, errored)
    return writes(mode, has_threshold=record.get("threshold") is not None,
                  failing=record.get("outcome") == "failed")


def _update(record: Mapping[str, Any]) -> ThresholdUpdate:
    kind = record["constraint"]
    value = float(record["record_value"])
    measured = float(record["relative_drop"] if "relative" in kind else record["drop"])
    return ThresholdUpdate(
        check_index=int(record["check_index"]), mode_key=record.get("mode_key"),
        target_key=record["target_key"], kind=kind, value=value, measured=measured,
        margin=abs(measured - value),
    )


def apply_recorded(records: Sequence[Mapping[str, Any]], mode: str, level: float,
                   environment: Mapping[str, Any]) -> list[str]:
    """Write the thresholds ``mode`` selects; return summary lines for the terminal."""
    by_spec: dict[str, list[ThresholdUpdate]] = defaultdict(list)
    provenance: dict[str, dict[str, str]] = {}
    for record in records:
        if wanted(record, mode):
            by_spec[str(record.get("spec_file") or record["spec"])].append(_update(record))
            prov = {k: str(record[k]) for k in ("data_sha256", "weights_sha256",
                                                "reference_sha256")
                    if record.get(k)}
            prov.update({k: str(environment[k]) for k in ("torch_version", "device", "dtype")
                         if environment.get(k)})
            provenance[str(record.get("spec_file") or record["spec"])] = prov
    new_signatures = _signatures_by_spec(records)
    lines = []
    for spec in sorted(set(by_spec) | set(new_signatures)):
        entry: tuple[str, str] | None = None
        files: list[tuple[Path, str]] = []
        try:
            if spec in new_signatures:
                path, signatures = new_signatures[spec]
                text = _merged_text(path, signatures)
                files.append((path, text))
                entry = (path.name, sha256_text(text))
            original, result, changed = rewritten_spec(
                spec, by_spec.get(spec, []), provenance=provenance.get(spec),
                signatures=entry)
            if result != original:
                files.append((Path(spec), result))
            # the sidecar and the spec that records its sha256: both or neither
            atomic_write_all(files)
        except (RecordError, OSError) as exc:
            lines.append(f"{spec}: NOT recorded: {exc}")
            continue
        if spec in new_signatures:
            path, signatures = new_signatures[spec]
            count = sum(len(u) for u in signatures.layers.values())
            lines.append(f"{spec}: {count} unit signature(s) recorded in {path}")
        if spec in by_spec:
            lines.append(f"{spec}: {changed} threshold(s) recorded/updated "
                         f"({len(by_spec[spec])} measured, {level * 100:g}% bounds)")
    if not by_spec and not new_signatures:
        lines.append(f"record mode {mode}: nothing to record")
    return lines


def _signatures_by_spec(records: Sequence[Mapping[str, Any]]
                        ) -> dict[str, tuple[Path, Signatures]]:
    """The unit signatures items measured (``identity: signature`` checks that had none
    recorded), per spec file: where the sidecar goes, and what to add to it."""
    found: dict[str, tuple[Path, Signatures]] = {}
    for record in sorted(records, key=lambda r: str(r.get("id"))):
        signature = record.get("signature")
        if not signature:
            continue
        spec = str(record.get("spec_file") or record["spec"])
        units = {int(u): tuple(float(v) for v in values) for u, values in signature.items()}
        classes = record.get("signature_classes")
        add = Signatures(layers={str(record["layer"]): units},
                         classes=tuple(classes) if classes else None,
                         data_sha256=str(record.get("signature_data_sha256") or ""),
                         meta={k: str(record[k]) for k in ("weights_sha256", "torch_version")
                               if record.get(k)})
        path = Path(str(record["signatures_file"]))
        found[spec] = (path, found[spec][1].merged(add) if spec in found else add)
    return found


def _merged_text(path: Path, signatures: Signatures) -> str:
    """The sidecar at ``path`` with ``signatures`` added (kept units stay), as text."""
    existing = None
    if path.exists():
        try:
            existing = Signatures.from_text(path.read_text(encoding="utf-8"), str(path))
        except (SignatureFileError, OSError, UnicodeDecodeError):
            existing = None  # unreadable: replaced by what was just measured
    return (existing.merged(signatures) if existing else signatures).to_text()
