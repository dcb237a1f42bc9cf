"""One spec item measured and judged: its record, its outcome and the text a user reads.

:func:`judge_item` is what every front end calls per item (the pytest plugin from its test
item, :func:`pytest_unitablate.run_spec` from its loop). It asks the engine for the
evaluations the item needs, masks per-example correctness to the item's target, builds
the :class:`~pytest_unitablate.verdicts.measure.Measurement` and judges it with the
torch-free verdicts. A miss is outcome ``failed`` with the failure text; a located problem
(a class with too few examples, a missing signature, ...) is outcome ``error`` with its
message. Unexpected exceptions are not caught here: each front end shows them its way.

Example::

    result = judge_item(engine, spec, subject, key)
    result.status       # "passed", "failed" or "error"
    result.message      # the failure text or the located problem (None when passed)
    result.record       # the numbers of the JSON report (id, baseline, ablated, drop, ...)
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_unitablate.core.identity import dead_units
from pytest_unitablate.core.layers import resolve_layer
from pytest_unitablate.engine.results import Engine, ItemResult, Miss
from pytest_unitablate.errors import ItemProblem
from pytest_unitablate.spec.ids import ItemKey
from pytest_unitablate.spec.model import Spec
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
    LOCATION,
    FailureContext,
    dead_text,
    disarmed_text,
    failure_text,
    forgotten_text,
    missing_threshold_text,
    no_match_text,
    problem_text,
    unguardable_text,
    unsupportable_text,
    warn_text,
    weak_text,
)
from pytest_unitablate.verdicts.layerwide import (
    LayerVerdict,
    class_drops,
    damaging_first,
    decided_early,
    judge_any_unit,
    judge_every_unit,
    rank_top_units,
    ranking_note,
)
from pytest_unitablate.verdicts.measure import (
    Measurement,
    drop_text,
    examples_needed,
    is_accuracy,
    judge,
    metric_of,
    record_value,
    vacuous_threshold,
    weak_threshold,
    writes,
)
from pytest_unitablate.verdicts.records import static_record

if TYPE_CHECKING:
    from pytest_unitablate.engine.refs import Subject

@functools.lru_cache(maxsize=64)
def _spec_lines(path: str, mtime_ns: int) -> tuple[str, ...]:
    try:
        return tuple(Path(path).read_text(encoding="utf-8").splitlines())
    except OSError:
        return ()


def spec_line(path: str, line: int) -> str:
    """Line ``line`` (1-based) of the spec file ``path`` as it is on disk (empty when it
    cannot be read): its end-of-line comment holds what was recorded."""
    try:
        lines = _spec_lines(path, os.stat(path).st_mtime_ns)
    except OSError:
        return ""
    return lines[line - 1] if 0 < line <= len(lines) else ""


def weights_text(record: dict[str, Any]) -> str:
    """The weights an item tested, as a failure names them: ``sha256 1a2b3c4d5e6f7a8b
    (checkpoints/candidate.pt)``; empty when they were not hashed.

    >>> weights_text({"weights_sha256": "1a2b", "checkpoint": "c.pt"}), weights_text({})
    ('sha256 1a2b (c.pt)', '')
    """
    sha = record.get("weights_sha256")
    if not sha:
        return ""
    where = f" ({record['checkpoint']})" if record.get("checkpoint") else ""
    return f"sha256 {sha}{where}"


def next_step(message: str, status: str) -> str | None:
    """What a failure says to do, for the report and the review page: its last line (the
    command that re-records the threshold, or what to look at); for a problem, fixing the
    spec line it names.

    >>> next_step("headline\\n  details\\n  To re-record: pytest --x", "failed")
    'To re-record: pytest --x'
    >>> next_step("s.yaml:4: no layer 'conv9' in the model", "error")
    'fix the spec at s.yaml:4'
    """
    if status == "error":
        found = next((m for m in map(LOCATION.match, message.splitlines()) if m), None)
        return f"fix the spec at {found.group(0).rstrip(': ')}" if found else None
    last = message.rstrip().rsplit("\n", 1)[-1].strip()
    return last or None


def judge_item(engine: Engine, spec: Spec, subject: Subject, key: ItemKey) -> ItemResult:
    """Measure and judge the item ``key`` of ``spec`` on ``subject``."""
    run = _ItemRun(engine, spec, subject, key)
    try:
        run.run()
    except Miss as exc:
        text = str(exc)  # a threshold miss starts with its headline; the others get one
        located = LOCATION.match(text) is not None
        run.result.status, run.result.message = "failed", (problem_text(text) if located
                                                            else text)
    except ItemProblem as exc:
        run.result.status, run.result.message = "error", problem_text(str(exc))
        run.record["problem"] = exc.cause
    if run.result.message is not None:  # the headline: the report's and the page's reason
        run.record["reason"] = run.result.message.split("\n", 1)[0]
        run.record["next_step"] = (
            "the model under test is broken: look at its weights and its forward pass"
            if run.record.get("problem") == "model"
            else next_step(run.result.message, run.result.status))
    return run.result


class _ItemRun:
    """The state of one item while it is judged."""

    def __init__(self, engine: Engine, spec: Spec, subject: Subject, key: ItemKey) -> None:
        self.engine, self.spec, self.subject, self.key = engine, spec, subject, key
        self.settings = engine.settings
        self.result = ItemResult(record=static_record(spec, key))
        #: the same ablation of the same examples under the other measure (accuracy or
        #: log-probability): what a weak guard's message offers instead
        self.other: Measurement | None = None
        #: identity: signature: recorded units whose own index is dead in the model under
        #: test (unit -> its profile's share of the recorded one)
        self.dead: dict[int, float] = {}
        #: the target's baseline cannot reach the item's min_* drop (a forgotten class)
        self.forgotten = False

    @property
    def record(self) -> dict[str, Any]:
        return self.result.record

    def warn(self, text: str) -> None:
        self.result.warnings.append(text)

    @property
    def noun(self) -> str:
        """What one of the check's units is called in messages: ``unit`` or ``head``."""
        return "head" if self.spec.unit_for(self.key.check) == "head" else "unit"

    def rerun(self, mode: str) -> str:
        return self.settings.rerun_command(mode, str(self.spec.path))

    def run(self) -> None:
        """Measure the constraint, record the numbers, and judge it."""
        engine, spec, subject, key = self.engine, self.spec, self.subject, self.key
        evals = engine.evals
        check, constraint = key.check, key.constraint
        baseline = evals.baseline(spec, subject)
        # a layer the model does not have is the problem to report, whatever else is wrong
        evals.guard(spec, check.line, lambda: resolve_layer(subject.model, check.layer))
        if spec.provenance and str(spec.path) not in engine.provenance_checked:
            engine.provenance_checked.add(str(spec.path))
            self._check_provenance()
        if spec.classes is not None and len(spec.classes) > baseline.num_classes:
            # fewer names than outputs is fine (they name classes 0..k-1); more is a mistake
            raise ItemProblem(
                f"{spec.where(spec.classes_line)}: classes names {len(spec.classes)} classes "
                f"but the model has {baseline.num_classes} outputs: one name per output, in "
                f"index order")
        mask = self._target_mask(key.expectation.target, baseline)
        # the class the unit order is estimated on (a group's order is the overall one:
        # the order only decides how soon a layer-wide check can stop, never its result)
        k = None if spec.is_group(key.expectation.target) else \
            spec.class_index(key.expectation.target)
        base_correct = baseline.correct[mask]
        base_lp = baseline.true_logprob[mask]
        kind = constraint.kind
        other_kind = "min_drop" if metric_of(kind) == "logprob" else "min_logprob_drop"
        problem = unsupportable_text(spec.where(key.line), key.id, constraint,
                                     int(base_correct.sum()), len(base_correct))
        # a min_* drop the target's baseline cannot reach: the model under test forgot the
        # class (record modes all, failed and calibrate measure and rewrite it instead); it
        # is measured like any other, then fails as forgotten (_judge)
        if problem is not None and self.settings.record_mode not in ("all", "failed",
                                                                     "calibrate"):
            hits, n = int(base_correct.sum()), len(base_correct)
            reach = (1.0 if hits else 0.0) if "relative" in kind else hits / max(n, 1)
            if constraint.threshold is not None and reach + 1e-12 < constraint.threshold:
                self.forgotten = True
            else:  # only a confidence bound is out of reach: too few examples to judge
                raise ItemProblem(problem)
        level = constraint.confidence or self.settings.record_level
        if is_accuracy(kind):  # the target's own accuracy: nothing is ablated
            m = Measurement.from_correct(base_correct, base_correct, level=level)
            self._record_measurement(m, None, None)
            # the report's interval is the accuracy's (Wilson), and no drop was measured
            self.record.update({"ablated": None, "drop": None, "p_value": None,
                                "relative_drop": None, "ci_low": m.bound(kind, level),
                                "ci_high": m.bound("max" + kind[3:], level)})
            self._record_damage(baseline, baseline.correct)
            self._judge(m, None, [])
            return

        layer: LayerVerdict | None = None
        notes: list[str] = []
        if check.mode == "units":
            units = self._identity_units(notes) if check.identity == "signature" else None
            if units is None:
                evals.check_units(spec, subject, check)
            ablated = engine.ablated(spec, subject, check, units=units)
            chosen_units = tuple(units or check.units)
            m, self.other = (Measurement.of(
                which, (base_correct, ablated.correct_share[mask]),
                (base_lp, ablated.true_logprob[mask]), level=level, units=chosen_units)
                for which in (kind, other_kind))
            after = ablated.correct_share
        elif check.mode in ("any_unit", "every_unit"):
            def row(sweep: Any, i: int, which: str = kind) -> Measurement:
                return Measurement.of(
                    which, (base_correct, sweep.correct(i)[mask]),
                    (base_lp, sweep.logprobs[i][mask]), level=level, units=(sweep.units[i],))

            def measure(sweep: Any) -> list[Measurement]:
                return [row(sweep, i) for i in range(len(sweep.units))]

            total = evals.channels(spec, subject, check)
            noun = self.noun
            how = f"{noun} index"
            if self._stops_early():
                order, how = engine.sweeps.unit_order(spec, subject, check, k,
                                                      damaging_first(constraint, check.mode))
                sweep = engine.sweeps.in_order(
                    spec, subject, check, order, lambda sw: decided_early(
                        constraint, measure(sw), mode=check.mode, at_least=check.at_least),
                    first=check.at_least)
            else:
                sweep = engine.sweeps.sweep(spec, subject, check)
            per_unit = measure(sweep)
            self.record.update({"engine": sweep.method, "engine_reason": sweep.reason or None,
                                "engine_plan": sweep.plan or None,
                                "units_evaluated": len(sweep.units), "units_total": total})
            self._warn_engine(sweep)
            if len(sweep.units) < total:
                notes.append(f"stopped early: the outcome was decided after {len(sweep.units)}"
                             f" of {total} {noun}s, tried in order of {how} "
                             f"({self.settings.full_sweeps_option} evaluates them all)")
            if check.mode == "any_unit":
                layer = judge_any_unit(constraint, per_unit, at_least=check.at_least,
                                       level=level, total=total, noun=noun)
            else:
                layer = judge_every_unit(constraint, per_unit, level=level, total=total,
                                         noun=noun)
            m, notes = layer.decider, list(layer.notes) + notes
            self.other = row(sweep, sweep.units.index(m.units[0]), other_kind)
            after = sweep.correct(sweep.units.index(m.units[0]))
        else:
            chosen, notes = self._top_units()
            ablated = engine.ablated(spec, subject, check, units=chosen)
            m, self.other = (Measurement.of(
                which, (base_correct, ablated.correct_share[mask]),
                (base_lp, ablated.true_logprob[mask]), level=level, units=tuple(chosen))
                for which in (kind, other_kind))
            after = ablated.correct_share
        deciding = layer.deciding if layer is not None else (
            list(m.units) if check.mode == "top_units" else None)
        self._record_measurement(m, layer, deciding)
        self._record_damage(baseline, after)
        if self.dead:  # nothing to record for a unit that is gone: the item fails
            self.record["record_value"] = None
            raise Miss(dead_text(self._context(deciding, notes), self.key.check.layer,
                                 self.dead, self.record, m))
        self._judge(m, deciding, notes)

    def _identity_units(self, notes: list[str]) -> list[int] | None:
        """For ``identity: signature``: the units of the model under test that match the
        check's recorded units (one-to-one across the layer's recorded units), or ``None``
        (this run uses the indices: record mode is recording their signatures now).

        A recorded unit whose best possible partner is below ``min_similarity`` fails the
        item: the unit the check protects is gone.
        """
        engine, spec, subject, check = self.engine, self.spec, self.subject, self.key.check
        recording = self.settings.record_mode != "none"
        signatures = engine.matching.signatures(spec, recording=recording)
        recorded = signatures.units(check.layer) if signatures is not None else {}
        missing = [u for u in check.units if u not in recorded]
        self.record.update({"identity": "signature", "min_similarity": check.min_similarity,
                            "recorded_units": list(check.units)})
        if missing:
            if not recording:
                raise ItemProblem(
                    f"{spec.where(check.identity_line)}: identity: signature, but no "
                    f"signature of {check.layer} unit(s) {missing} is recorded in "
                    f"{spec.signatures_path()}; record it (from the reference model) with: "
                    f"{self.rerun('new')}")
            engine.evals.check_units(spec, subject, check)
            profiles = engine.matching.profiles(spec, subject, check)
            self.record.update({
                "signature": {str(u): [float(v) for v in profiles[u]] for u in check.units},
                "signatures_file": str(spec.signatures_path()),
                "signature_classes": list(spec.classes) if spec.classes else None,
                "signature_data_sha256": engine.evals.baseline(spec, subject).fingerprint})
            notes.append(f"identity: signature: no signature recorded yet for unit(s) "
                         f"{missing}; this run takes the indices as they are and record mode "
                         f"writes the signatures")
            return None
        matches = engine.matching.match(spec, subject, check)
        fingerprint = engine.evals.baseline(spec, subject).fingerprint
        if signatures is not None and signatures.data_sha256 and \
                signatures.data_sha256 != fingerprint and \
                str(spec.path) not in engine.signature_data_warned:
            engine.signature_data_warned.add(str(spec.path))
            self.warn(f"{spec.where(spec.signatures_line)}: the signatures were recorded on "
                      f"other evaluation data (fingerprint {signatures.data_sha256[:12]}...); "
                      f"profiles are class averages, so matching still works, but re-record "
                      f"to silence this")
        mapped = [matches[u] for u in check.units]
        profiles = engine.matching.profiles(spec, subject, check)
        # every recorded unit of the layer whose own index is dead (and that matching moved)
        dead_all = {u: share for u, share in dead_units(recorded, profiles).items()
                    if u in matches and matches[u].unit != u}
        # a retrain that renumbered the units can put an unused unit at a recorded index:
        # then matching is trusted (another recorded unit of the layer moved, alive). A
        # recorded unit that moved because its own index is dead (pruned) is no evidence
        # of renumbering: two pruned units do not excuse each other.
        renumbered = any(m.unit is not None and m.unit != r and r not in dead_all
                         for r, m in matches.items())
        dead = {u: dead_all[u] for u in check.units if u in dead_all}
        self.dead = {} if renumbered else dead
        self.record.update({
            "dead_units": sorted(self.dead) or None,
            "recorded_drop": self.key.constraint.measured,
            "matched_units": [m.unit for m in mapped],
            "similarity": [round(m.similarity, 4) if m.unit is not None else None
                           for m in mapped],
            "mapping": "; ".join(m.describe() for m in mapped)})
        left = [int(m.unit) for m in mapped if m.unit is not None]
        if self.dead and left:  # measured on the units matching would take, then failed
            return left
        gone = [m for m in mapped if m.unit is None or m.similarity < check.min_similarity]
        if gone:
            raise Miss(no_match_text(
                spec.where(check.identity_line or check.line), self.key.id, check.layer,
                gone, check.min_similarity, matches, self.noun))
        notes.insert(0, "identity: signature: " + "; ".join(m.describe() for m in mapped))
        was = self.key.constraint.measured
        if was is not None:
            notes.append(f"drop when recorded (recorded {self.noun}s "
                         f"{', '.join(map(str, check.units))}): "
                         f"{drop_text(self.key.constraint.kind.replace('max', 'min'), was)}")
        return left

    def _stops_early(self) -> bool:
        """Whether stopping early can pay: only ``any_unit``, whose usual outcome (it
        passes) is decided by its first ``at_least`` units. A passing ``every_unit`` must
        see every unit, so it goes straight to the full sweep (which also names the worst
        unit of all when it fails). Early stopping needs a threshold to decide against,
        and record mode needs every unit (the bound it writes is the best or worst of
        all)."""
        return (self.key.check.mode == "any_unit" and not self.settings.full_sweeps
                and self.settings.record_mode == "none"
                and self.key.constraint.threshold is not None)

    def _warn_engine(self, sweep: Any) -> None:
        """A sweep that fell back to the naive engine is slow: say so, once per layer (not
        when the naive loop was chosen because it measured faster, or is the only engine
        for heads and tokenizer-style batches)."""
        layer = (str(self.spec.path), self.key.check.layer)
        refused = sweep.reason and "measured on the first batch" not in sweep.reason and \
            not sweep.reason.startswith(("heads:", "tokenizer-style"))
        if "naive" in sweep.method and refused and layer not in self.engine.engine_warned:
            self.engine.engine_warned.add(layer)
            self.warn(f"{self.spec.where(self.key.check.layer_line)}: the sweep of "
                      f"{self.key.check.layer} used the naive engine (one forward per unit): "
                      f"{sweep.reason}")

    def _target_mask(self, target: str | int, baseline: Any, ranking: bool = False) -> Any:
        """The examples of ``target``: every example for ``overall``, a class's, or a data
        group's (checked: the class exists and has enough examples)."""
        spec = self.spec
        if spec.is_group(target):
            ids = self.subject.group_ids(ranking)
            if ids is None or len(ids) != len(baseline.labels):
                raise ItemProblem(f"{spec.where(self.key.expectation.line)}: the data's groups "
                                  f"hold {0 if ids is None else len(ids)} examples, the "
                                  f"evaluation saw {len(baseline.labels)}")
            mask = ids == spec.group_names.index(str(target))
            needed = max(spec.min_examples, 1)
            if int(mask.sum()) < needed:
                raise ItemProblem(
                    f"{spec.where(self.key.expectation.line)}: data group {target!r} has "
                    f"{int(mask.sum())} example(s); the spec needs at least {needed}")
            return mask
        k = spec.class_index(target)
        if k is None:
            return slice(None)
        if not ranking:
            self._check_class(k, baseline)
        return baseline.labels == k

    def _check_class(self, k: int, baseline: Any) -> None:
        spec, key = self.spec, self.key
        name = spec.target_name(key.expectation.target)
        here = spec.where(key.expectation.line)
        if k >= baseline.num_classes:
            raise ItemProblem(
                f"{here}: class index {k} ({name}) is out of range: the model has "
                f"{baseline.num_classes} outputs (0..{baseline.num_classes - 1})")
        count = int(baseline.class_counts[k])
        needed = max(spec.min_examples, 1)
        if count < needed:
            raise ItemProblem(
                f"{here}: class {name} has {count} example(s) in the evaluation data; the "
                f"spec needs at least {needed} (min_examples)")

    def _top_units(self) -> tuple[list[int], list[str]]:
        """The ``top_units`` units, ranked by their single-unit drop of the top class."""
        engine, spec, subject, check = self.engine, self.spec, self.subject, self.key.check
        assert check.top_class is not None and check.top_units is not None
        ranking = spec.ranking_data is not None
        rank_base = engine.evals.baseline(spec, subject, ranking=ranking)
        sweep = engine.sweeps.sweep(spec, subject, check, ranking=ranking)
        rmask = self._target_mask(check.top_class, rank_base, ranking=ranking)
        drops = class_drops(rank_base.correct[rmask],
                            (sweep.correct(i)[rmask] for i in range(len(sweep.units))))
        self.record.update({"engine": sweep.method, "engine_reason": sweep.reason or None,
                            "engine_plan": sweep.plan or None})
        self._warn_engine(sweep)
        chosen = rank_top_units(list(sweep.units), drops, check.top_units)
        name = spec.target_name(check.top_class)
        note = ranking_note(list(sweep.units), drops, check.top_units, name)
        self.record["ranking_note"] = note
        source = "the ranking_data split" if ranking else "the evaluation data (no ranking_data)"
        notes = [f"units ranked by their drop of {name} on {source}"]
        return chosen, notes + ([f"ranking: {note}"] if note else [])

    def _record_measurement(self, m: Measurement, layer: LayerVerdict | None,
                            deciding: list[int] | None) -> None:
        """The item's numbers (JSON report, JUnit, xdist, record mode)."""
        kind = self.key.constraint.kind
        measured: dict[str, Any] = {
            "metric": m.metric, "n": m.n, "baseline": m.baseline, "ablated": m.ablated,
            "drop": m.drop,
            "ci_low": m.ci[0], "ci_high": m.ci[1], "ci_level": m.ci_level,
            "p_value": m.p_value,
            "relative_drop": m.value("min_relative_drop") if m.metric == "accuracy" else None,
            "record_value": record_value(kind, m, self.settings.record_level)
            if layer is None else layer.record_value,
            "deciding_units": deciding,
            "torch_version": str(sys.modules["torch"].__version__),
            "torch_threads": int(sys.modules["torch"].get_num_threads()),
            "dtype": self.engine.evals.dtype,
        }
        if self.key.check.mode == "top_units":
            measured["units"] = deciding
        # provenance in record mode; the review page's run facts (not in the JSON report)
        if self.settings.record_mode != "none" or self.settings.run_facts:
            measured.update(self.engine.evals.hashes(self.spec, self.subject))
        self.record.update(measured)

    def _record_damage(self, baseline: Any, after: Any) -> None:
        """The accuracy drop of every class and overall under the item's ablation (its
        deciding unit's, for a layer-wide check), fractions: the review page's unit x
        class heatmap and its overall-vs-class plot."""
        labels, before = baseline.labels, baseline.correct
        if baseline.num_classes > 256:  # a language model's vocabulary: no heatmap
            self.record["class_drops"] = None
            self.record["overall_drop"] = float(before.mean() - after.mean())
            return
        drops: list[float | None] = []
        for k in range(baseline.num_classes):
            mask = labels == k
            drops.append(float(before[mask].mean() - after[mask].mean()) if mask.any()
                         else None)
        self.record["class_drops"] = drops
        self.record["overall_drop"] = float(before.mean() - after.mean())

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


__all__ = ["Engine", "ItemResult", "Miss", "judge_item"]
