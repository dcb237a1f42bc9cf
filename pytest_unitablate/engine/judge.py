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

import sys
from typing import TYPE_CHECKING, Any

from pytest_unitablate.core.layers import resolve_layer
from pytest_unitablate.engine.results import Engine, ItemResult, Miss
from pytest_unitablate.errors import ItemProblem
from pytest_unitablate.spec.ids import ItemKey
from pytest_unitablate.spec.model import Spec
from pytest_unitablate.verdicts.failure import (
    LOCATION,
    dead_text,
    problem_text,
    unsupportable_text,
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
    is_accuracy,
    metric_of,
    record_value,
)

if TYPE_CHECKING:
    from pytest_unitablate.engine.refs import Subject
from pytest_unitablate.engine.item_identity import ItemIdentity
from pytest_unitablate.engine.item_state import next_step, spec_line, weights_text
from pytest_unitablate.engine.item_verdict import ItemVerdict
from pytest_unitablate.verdicts.fit import at_or_below_chance, chance_text, width_text


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


class _ItemRun(ItemVerdict, ItemIdentity):
    """One item: measured here, its units matched (:class:`ItemIdentity`) and judged
    (:class:`ItemVerdict`)."""

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
        if spec.classes is not None and len(spec.classes) != baseline.num_classes:
            # logits that do not fit the classes are an output that is not the logits (an
            # embedding, features) or a wrong list: either way every number would be wrong
            raise ItemProblem(width_text(spec, baseline.num_classes))
        self._chance_note(baseline)
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

    def _chance_note(self, baseline: Any) -> None:
        """Say so when every class is at or below chance at baseline: no ablation can show
        what the model knows when it knows nothing (an untrained model, or the wrong
        output). Kept in the record (``at_chance``: a JUnit property under xunit1) and said
        once per spec as a warning."""
        at_chance = at_or_below_chance(baseline.class_accuracy, baseline.class_counts)
        self.record["at_chance"] = at_chance
        if at_chance and str(self.spec.path) not in self.engine.chance_noted:
            self.engine.chance_noted.add(str(self.spec.path))
            self.warn(chance_text(self.spec, baseline.num_classes,
                                  float(max(baseline.class_accuracy, default=0.0))))

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


__all__ = ["Engine", "ItemResult", "Miss", "judge_item", "next_step", "spec_line",
           "weights_text"]
