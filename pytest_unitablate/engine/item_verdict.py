"""The verdict on one measured item: the threshold (written, recorded or calibrated) it
is judged against, the refusals of guards that cannot fail or cannot pass, and the
failure text with its next step.

Example::

    class Run(ItemVerdict): ...
    Run(engine, spec, subject, key)._judge(measurement, deciding=[245], notes=[])
    # raises Miss with the failure text, or ItemProblem; returns when it passed
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

from pytest_unitablate.engine.results import Miss
from pytest_unitablate.errors import ItemProblem
from pytest_unitablate.spec.rewrite import (
    provenance_mismatches,
    recorded_measurement,
    rounded_threshold,
)
from pytest_unitablate.verdicts.calibration import (
    Calibrated,
    CalibrationFile,
    CalibrationFileError,
    Point,
    calibrated_threshold,
    calibration_path,
    definition_of,
    unguardable_reason,
)
from pytest_unitablate.verdicts.failure import (
    FailureContext,
    disarmed_text,
    failure_text,
    forgotten_text,
    missing_threshold_text,
    unguardable_text,
    warn_text,
    weak_text,
)
from pytest_unitablate.verdicts.measure import (
    Measurement,
    drop_text,
    examples_needed,
    judge,
    vacuous_threshold,
    weak_threshold,
    writes,
)

if TYPE_CHECKING:
    pass

from pytest_unitablate.engine.item_state import ItemState, spec_line, weights_text


class ItemVerdict(ItemState):
    """Judging an item's measurement (:meth:`_judge`) and the texts it needs."""

    def _judge(self, m: Measurement, deciding: list[int] | None, notes: list[str]) -> None:
        spec, key = self.spec, self.key
        constraint = key.constraint
        mode = self.settings.record_mode
        verdict = judge(constraint, m) if constraint.threshold is not None else None
        if verdict is not None:
            self.record["outcome_margin"] = verdict.margin
        calibration = self._calibration(m)
        if mode == "calibrate":
            return  # measured; the run's owner calibrates from every model (and refuses)
        if calibration is not None and constraint.threshold is not None:
            inside = calibration.low - 1e-12 <= m.value(constraint.kind) <= \
                calibration.high + 1e-12
            notes = [*notes, f"calibration: {drop_text(constraint.kind, m.value(constraint.kind))}"
                     f" is {'inside' if inside else 'outside'} the range seen over "
                     f"{calibration.models} reference model(s) "
                     f"({calibration.range_text()}; threshold "
                     f"{drop_text(constraint.kind, constraint.threshold)})"]
        recorded = recorded_measurement(spec_line(str(spec.path), key.line), constraint.kind)
        if recorded is not None:  # what record mode or discover measured (the page shows it)
            self.record["reference_note"] = recorded
        ctx = self._context(deciding, notes, calibrated=calibration is not None)
        if writes(mode, has_threshold=verdict is not None,
                   failing=verdict is not None and not verdict.passed):
            self._refuse_vacuous(ctx, m)
        if verdict is None:
            if mode in ("new", "all"):
                return
            unguardable = self._unguardable()
            if unguardable is not None:  # calibrated, and refused: say so, not "record"
                raise Miss(unguardable)
            value = self.record.get("record_value")
            refused = None if value is None else self._unrecordable(ctx, m, float(value),
                                                                    first=True)
            if refused is not None:  # record mode would refuse it too: say so, not "record"
                raise Miss(refused[1])
            raise Miss(missing_threshold_text(
                spec.where(key.line), key.id, constraint.kind, m, self.rerun("new")))
        if mode == "all":
            return
        if self.forgotten and not verdict.passed:
            reference = calibration.baseline if calibration is not None and \
                math.isfinite(calibration.baseline) else None
            self.record.update({"forgotten": True, "reference_baseline": reference})
            raise Miss(forgotten_text(ctx, constraint, m, verdict, reference))
        if not verdict.passed:
            raise Miss(failure_text(ctx, constraint, m, verdict))
        if verdict.warn:
            self.warn(warn_text(spec.where(key.line), key.id, constraint, verdict))

    def _context(self, deciding: list[int] | None, notes: list[str],
                 calibrated: bool = False) -> FailureContext:
        """``calibrated``: the threshold rests on several reference models, so the way to
        accept this model is to add it to them (record mode ``calibrate``)."""
        spec, key = self.spec, self.key
        return FailureContext(
            where=spec.where(key.line), head=key.check_part,
            ablation=spec.ablation_for(key.check).label(),
            target=spec.target_name(key.expectation.target),
            hint=self.rerun("calibrate" if calibrated else "failed"), deciding=deciding,
            notes=notes, noun=self.noun,
            kind="group" if spec.is_group(key.expectation.target) else "class",
            weights=weights_text(self.record))

    def _calibration(self, m: Measurement) -> Calibrated | None:
        """What the spec's calibration file says of this item (its models' range), or
        ``None`` when it holds no model of this item's definition. In record mode
        ``calibrate`` the item also keeps this model's point in its record: the run's
        owner adds it to the file and writes the thresholds calibrated from all models
        (:mod:`pytest_unitablate.verdicts.recording`)."""
        spec, kind = self.spec, self.key.constraint.kind
        path = str(spec.path)
        if path not in self.engine.calibrations:
            try:
                self.engine.calibrations[path] = CalibrationFile.read(
                    calibration_path(spec.path))
            except CalibrationFileError as exc:
                raise ItemProblem(str(exc)) from None
        definition = definition_of(self.record)
        bound = self.record.get("record_value")
        if self.settings.record_mode == "calibrate" and bound is not None:
            ci = (float(self.record["ci_low"]), float(self.record["ci_high"]))
            point = Point(m.value(kind), float(bound), ci, m.n, m.baseline)
            self.record.update({"calibration_point": point.to_json(),
                                "calibration_definition": definition})
        points = self.engine.calibrations[path].points(self.key.id, definition)
        if not points:
            return None
        found = calibrated_threshold(kind, points)
        self.record.update({"calibration_models": found.models,
                            "calibration_low": found.low, "calibration_high": found.high})
        return found

    def _unguardable(self) -> str | None:
        """Why calibration left this item's threshold empty, when the calibration file
        holds enough models to say so (the text record mode ``calibrate`` printed), or
        ``None``."""
        file = self.engine.calibrations.get(str(self.spec.path))
        if file is None:
            return None
        found = file.calibrated(self.key.id, definition_of(self.record))
        if found is None:
            return None
        kind = self.key.constraint.kind
        reason = unguardable_reason(kind, found, self.settings.record_floor)
        if reason is None:
            return None
        return unguardable_text(self.spec.where(self.key.line), self.key.id, kind, found,
                                reason, named=self.key.check.mode == "units") + \
            "\n  Remove this constraint from the spec, or guard it as suggested."

    def _refuse_vacuous(self, ctx: FailureContext, m: Measurement) -> None:
        """Record mode never writes a threshold that could not fail, nor a ``min_*`` bound
        that keeps too little of the effect: the item fails instead, says why and what
        would make a guard, and the summary lists it (the spec's threshold stays)."""
        value = self.record.get("record_value")
        if value is None:
            return
        found = self._unrecordable(ctx, m, float(value),
                                   first=self.key.constraint.threshold is None)
        if found is None:
            return
        field, text = found
        self.record.update({"record_value": None, field: text})
        raise Miss(text)

    def _unrecordable(self, ctx: FailureContext, m: Measurement, value: float, first: bool
                      ) -> tuple[str, str] | None:
        """``("disarmed", text)`` when ``value`` written as the item's threshold could not
        fail, ``("weak", text)`` when it would guard too little of the effect, else None."""
        kind = self.key.constraint.kind
        written = rounded_threshold(kind, value)
        reason = vacuous_threshold(kind, written, m.baseline, self.settings.record_floor)
        if reason is not None:
            return "disarmed", disarmed_text(ctx, kind, m, reason, first=first)
        share = self.settings.record_min_share
        reason = weak_threshold(kind, written, m, share)
        if reason is None:
            return None
        return "weak", weak_text(ctx, kind, m, reason, examples_needed(m, kind, share),
                                 self.other, share)

    def _check_provenance(self) -> None:
        """Once per spec and process: what of the spec's recorded environment differs now,
        in the item's record (``provenance``; the front end says it once per run, in its
        summary and the report's ``tested`` entry, not as a warning per process).

        Only what should not differ is compared: torch, device, dtype and the evaluation
        data. The weights are left out: in CI the model under test is a candidate, whose
        weights differ from the recorded model's by design (the report names both)."""
        evals = self.engine.evals
        recorded = {k: v for k, v in self.spec.provenance if k != "weights_sha256"}
        current: dict[str, str] = {
            "torch_version": str(sys.modules["torch"].__version__),
            "device": evals.device, "dtype": str(evals.dtype),
        }
        if "data_sha256" in recorded:
            current.update(evals.hashes(self.spec, self.subject))
        lines = provenance_mismatches(recorded, current)
        if lines:
            self.record["provenance"] = lines


__all__ = ["ItemVerdict"]
