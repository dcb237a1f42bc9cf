"""Record mode after a run: turn item records into spec updates (torch-free).

Items measure; the process that owns the run (the pytest controller, ``run_spec``, the
``check`` command) decides which thresholds to write (by mode and outcome) and writes them
with :func:`pytest_unitablate.spec.rewrite.rewritten_spec`: per spec, the spec, its
signatures sidecar and its calibration file in one
:func:`pytest_unitablate.atomic.atomic_write_all` (an interrupt leaves all as they were or
all rewritten). Mode ``calibrate`` adds this run's model to the calibration file
(:mod:`pytest_unitablate.verdicts.calibration`) and writes the thresholds the items
calibrated from every model recorded so far.

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
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pytest_unitablate.atomic import atomic_write_all
from pytest_unitablate.spec.rewrite import RecordError, ThresholdUpdate, rewritten_spec
from pytest_unitablate.spec.signatures import SignatureFileError, Signatures, sha256_text
from pytest_unitablate.verdicts.calibration import (
    MIN_MODELS,
    CalibrationFile,
    CalibrationFileError,
    Point,
    calibration_path,
    unguardable_reason,
)
from pytest_unitablate.verdicts.failure import unguardable_text
from pytest_unitablate.verdicts.measure import writes

RecordMode = Literal["none", "new", "failed", "all", "calibrate"]
RECORD_MODES: tuple[RecordMode, ...] = ("none", "new", "failed", "all", "calibrate")
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


def record_problem(mode: str, force: bool) -> str | None:
    """Why record mode ``mode`` cannot run here (an unknown mode, or a CI environment
    without ``force``), or ``None``."""
    if mode not in RECORD_MODES:
        return f"record mode must be one of {', '.join(RECORD_MODES)}"
    ci = ci_environment()
    if mode != "none" and ci is not None and not force:
        return (f"record mode refused: {ci} is set (a CI run); record on a developer "
                f"machine, or force it")
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
    measured = float(record["baseline"] if kind.endswith("_accuracy") else
                     record["relative_drop"] if "relative" in kind else record["drop"])
    return ThresholdUpdate(
        check_index=int(record["check_index"]), mode_key=record.get("mode_key"),
        target_key=record["target_key"], kind=kind, value=value, measured=measured,
        margin=abs(measured - value),
    )


def apply_recorded(records: Sequence[MutableMapping[str, Any]], mode: str, level: float,
                   environment: Mapping[str, Any]) -> list[str]:
    """Write the thresholds ``mode`` selects; return summary lines for the terminal.

    Mode ``calibrate`` also annotates the records of the items it calibrated
    (``calibration_models``, ``calibration_low``, ``calibration_high``) and of those it
    found unguardable (``unguardable``: the reason, not written), for the report."""
    by_spec: dict[str, list[ThresholdUpdate]] = defaultdict(list)
    provenance: dict[str, dict[str, str]] = {}
    try:
        calibrations = _calibrations_by_spec(records) if mode == "calibrate" else {}
    except CalibrationFileError as exc:  # changed under us since the items read it
        return [f"NOT recorded: {exc}"]
    refused: list[str] = []
    for record in records:
        spec = str(record.get("spec_file") or record["spec"])
        if mode == "calibrate":
            update = _calibrated(record, calibrations)
            if update is None and record.get("unguardable"):
                refused.append(str(record["unguardable"]))
        else:
            update = _update(record) if wanted(record, mode) else None
        if update is None:
            continue
        by_spec[spec].append(update)
        # a calibrated spec rests on several models: no one model's weights
        keys = ("data_sha256", "reference_sha256") if mode == "calibrate" else (
            "data_sha256", "weights_sha256", "reference_sha256")
        prov = {k: str(record[k]) for k in keys if record.get(k)}
        prov.update({k: str(environment[k]) for k in ("torch_version", "device", "dtype")
                     if environment.get(k)})
        provenance[spec] = prov
    new_signatures = _signatures_by_spec(records)
    lines = []
    for spec in sorted(set(by_spec) | set(new_signatures) | set(calibrations)):
        entry: tuple[str, str] | None = None
        files: list[tuple[Path, str]] = []
        try:
            if spec in calibrations:
                files.append((calibration_path(spec), calibrations[spec][0].to_text()))
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
        except (RecordError, OSError, CalibrationFileError) as exc:
            lines.append(f"{spec}: NOT recorded: {exc}")
            continue
        if spec in calibrations:
            _, models = calibrations[spec]
            wait = "" if models >= MIN_MODELS else (
                f"; thresholds are calibrated from {MIN_MODELS} models on (record "
                f"{MIN_MODELS - models} more reference model(s))")
            lines.append(f"{spec}: this model's measurements added to "
                         f"{calibration_path(spec)} ({models} model(s) recorded){wait}")
        if spec in new_signatures:
            path, signatures = new_signatures[spec]
            count = sum(len(u) for u in signatures.layers.values())
            lines.append(f"{spec}: {count} unit signature(s) recorded in {path}")
        if spec in by_spec:
            lines.append(f"{spec}: {changed} threshold(s) recorded/updated "
                         f"({len(by_spec[spec])} measured, {level * 100:g}% bounds)")
    if not by_spec and not new_signatures and not calibrations:
        lines.append(f"record mode {mode}: nothing to record")
    if refused:
        lines.append(f"{len(refused)} constraint(s) unguardable over the reference models, "
                     f"NOT recorded (their thresholds stay as they were):")
        lines += refused
    return lines


def _calibrated(record: MutableMapping[str, Any],
                calibrations: Mapping[str, tuple[CalibrationFile, int]]
                ) -> ThresholdUpdate | None:
    """The calibrated threshold of a measured item (``None`` with too few models, or when
    it is unguardable: then the record says why)."""
    spec = str(record.get("spec_file") or record["spec"])
    if not record.get("calibration_point") or spec not in calibrations:
        return None
    found = calibrations[spec][0].calibrated(str(record["id"]),
                                             str(record["calibration_definition"]))
    if found is None:
        return None
    kind = record["constraint"]
    record.update({"calibration_models": found.models, "calibration_low": found.low,
                   "calibration_high": found.high})
    reason = unguardable_reason(str(kind), found)
    if reason is not None:
        record["unguardable"] = unguardable_text(
            f"{record['spec']}:{record['line']}", str(record["id"]), str(kind), found, reason,
            named=record.get("mode") == "units")
        return None
    point = Point.from_json(record["calibration_point"])
    return ThresholdUpdate(
        check_index=int(record["check_index"]), mode_key=record.get("mode_key"),
        target_key=record["target_key"], kind=kind, value=found.threshold,
        measured=point.value, margin=abs(point.value - found.threshold),
        rests_on=found.rests_on())


def _calibrations_by_spec(records: Sequence[Mapping[str, Any]]
                          ) -> dict[str, tuple[CalibrationFile, int]]:
    """Each spec's calibration file with this run's measurements added (keyed by the
    weights' sha256: the same model twice counts once), and the number of models whose
    measurements its items hold at most."""
    found: dict[str, tuple[CalibrationFile, int]] = {}
    for record in sorted(records, key=lambda r: str(r.get("id"))):
        point = record.get("calibration_point")
        sha = record.get("weights_sha256")
        if not point or not sha:
            continue
        spec = str(record.get("spec_file") or record["spec"])
        if spec not in found:
            found[spec] = (CalibrationFile.read(calibration_path(spec)), 0)
        calibration, models = found[spec]
        definition = str(record["calibration_definition"])
        calibration.add(str(sha), str(record["id"]), definition, str(record["constraint"]),
                        Point.from_json(point),
                        {k: str(record[k]) for k in ("data_sha256", "torch_version")
                         if record.get(k)})
        count = len(calibration.points(str(record["id"]), definition))
        found[spec] = (calibration, max(models, count))
    return found


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
