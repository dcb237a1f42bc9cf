"""The test item of one spec constraint: it wires fixtures, caches and reports (torch-free
at import).

The item is a real ``pytest.Function`` built with the public
``Function.from_parent(..., callobj=...)`` constructor, so the spec's model and data
fixtures resolve through pytest's own fixture machinery (custom ``Item`` subclasses get no
fixtures: pytest#2471, #3639). It only orchestrates: evaluations come from the session
cache (:mod:`pytest_unitablate.plugin.session`), judgement and failure text from the
torch-free :mod:`pytest_unitablate.verdicts` package.

Example (what pytest does with it)::

    item = UnitAblateItem.from_parent(spec_file, name=key.id, callobj=run_spec_item)
    item.setup_spec(spec, key)      # marks and the static JSON-report fields
    item.runtest()                  # -> run_spec_item(request) -> item.run_check(request)
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from pytest_unitablate.plugin.record_mode import writes
from pytest_unitablate.plugin.report import junit_properties
from pytest_unitablate.plugin.session import ItemProblem
from pytest_unitablate.plugin.state import PluginState, UnitAblateWarning, get_state
from pytest_unitablate.spec.ids import ItemKey
from pytest_unitablate.spec.model import Spec
from pytest_unitablate.spec.rewrite import provenance_mismatches, rounded_threshold
from pytest_unitablate.verdicts.failure import (
    FailureContext,
    disarmed_text,
    failure_text,
    missing_threshold_text,
    no_match_text,
    unsupportable_text,
    warn_text,
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
    judge,
    record_value,
    vacuous_threshold,
)


class ThresholdMiss(Exception):
    """A failed expectation: an ordinary test failure with a readable message."""


def run_spec_item(request: pytest.FixtureRequest) -> None:
    """The test function of every spec item; the item itself does the work."""
    item = request.node
    assert isinstance(item, UnitAblateItem)
    item.run_check(request)


class UnitAblateItem(pytest.Function):
    """One constraint of one target of one check."""

    spec: Spec
    key: ItemKey

    def setup_spec(self, spec: Spec, key: ItemKey) -> None:
        self.spec = spec
        self.key = key
        #: The item's numbers; the makereport hook puts them on the report (JSON report,
        #: terminal table, record mode), and xunit1 JUnit gets them as properties.
        self.unitablate_record: dict[str, Any] = {}
        self.add_marker(pytest.mark.unitablate)
        if self.config.pluginmanager.hasplugin("xdist"):
            # registered by pytest-xdist; without it the mark would be an unknown marker
            # one group per (spec, layer): --dist loadgroup runs different layers' sweeps
            # in parallel; the disk cache makes each evaluation once whatever the mode
            self.add_marker(pytest.mark.xdist_group(name=f"{spec.path.name}:{key.check.layer}"))
        for mark in key.check.marks:
            self.add_marker(getattr(pytest.mark, mark.name)(*mark.args, **dict(mark.kwargs)))
        check, target = key.check, key.expectation.target
        self._set_props({
            "id": key.id,
            "spec": str(spec.path),
            "spec_file": str(self.path),
            "line": key.line,
            "layer": check.layer,
            "mode": check.mode,
            "units": list(check.units) if check.mode == "units" else None,
            "ablation": spec.ablation_for(check).label(),
            "target": spec.target_name(target),
            "class_index": spec.class_index(target),
            "constraint": key.constraint.kind,
            "threshold": key.constraint.threshold,
            "check_index": check.index,
            "mode_key": check.mode_key,
            "target_key": target,
        })

    def _set_props(self, values: dict[str, Any]) -> None:
        self.unitablate_record.update(values)
        if self.config.getini("junit_family") in ("xunit1", "legacy"):
            self.user_properties[:] = junit_properties(self.unitablate_record)

    # --- setup: fixtures, torch, model and data ----------------------------------------

    def setup(self) -> None:
        """Resolve the spec's model and data in the setup phase.

        A failing fixture is then pytest's own ``ERROR at setup`` with the fixture's
        traceback, and ``--durations`` and ``--timeout`` charge the loading to setup, as
        they would for a test that requested the fixtures itself. The fixtures are
        resolved with ``request.getfixturevalue`` on the item's public ``request``.
        """
        super().setup()
        request = self.funcargs["request"]
        assert isinstance(request, pytest.FixtureRequest)
        try:
            get_state(self.config).runtime().prepare(self.spec, request)
        except ItemProblem as exc:
            pytest.fail(str(exc), pytrace=False)

    # --- running ------------------------------------------------------------------------

    def run_check(self, request: pytest.FixtureRequest) -> None:
        """Measure the constraint, record the numbers, and judge it."""
        state = get_state(self.config)
        session = state.runtime()
        spec, key = self.spec, self.key
        check, constraint = key.check, key.constraint
        baseline = session.baseline(spec, request)
        if spec.provenance and str(spec.path) not in state.provenance_checked:
            state.provenance_checked.add(str(spec.path))
            self._check_provenance(session, request)
        if spec.classes is not None and len(spec.classes) > baseline.num_classes:
            # fewer names than outputs is fine (they name classes 0..k-1); more is a mistake
            raise ItemProblem(
                f"{spec.where(spec.classes_line)}: classes names {len(spec.classes)} classes "
                f"but the model has {baseline.num_classes} outputs: one name per output, in "
                f"index order")
        k = spec.class_index(key.expectation.target)
        if k is not None:
            self._check_class(k, baseline)
        mask = slice(None) if k is None else (baseline.labels == k)
        base_correct = baseline.correct[mask]
        problem = unsupportable_text(spec.where(key.line), key.id, constraint,
                                     int(base_correct.sum()), len(base_correct))
        if problem is not None and state.record_mode not in ("all", "failed"):
            # record modes all and failed measure and rewrite such a threshold instead
            raise ItemProblem(problem)
        level = constraint.confidence or state.record_level

        layer: LayerVerdict | None = None
        notes: list[str] = []
        if check.mode == "units":
            units = self._identity_units(state, session, request, notes) \
                if check.identity == "signature" else None
            if units is None:
                session.check_units(spec, check, request)
            ablated = session.ablated(spec, check, request, units=units)
            m = Measurement.from_correct(base_correct, ablated.correct[mask], level=level,
                                         units=tuple(units or check.units))
        elif check.mode in ("any_unit", "every_unit"):
            def measure(sweep: Any) -> list[Measurement]:
                return [Measurement.from_correct(
                    base_correct, (sweep.predictions[i] == sweep.labels)[mask], level=level,
                    units=(u,)) for i, u in enumerate(sweep.units)]

            total = session.channels(spec, check, request)
            how = "unit index"
            if self._stops_early(state):
                order, how = session.unit_order(spec, check, request, k,
                                                damaging_first(constraint, check.mode))
                sweep = session.sweep_in_order(
                    spec, check, request, order, lambda sw: decided_early(
                        constraint, measure(sw), mode=check.mode, at_least=check.at_least))
            else:
                sweep = session.sweep(spec, check, request)
            per_unit = measure(sweep)
            self._set_props({"engine": sweep.method, "engine_reason": sweep.reason or None,
                             "engine_plan": sweep.plan or None,
                             "units_evaluated": len(sweep.units), "units_total": total})
            self._warn_engine(sweep)
            if len(sweep.units) < total:
                notes.append(f"stopped early: the outcome was decided after {len(sweep.units)}"
                             f" of {total} units, tried in order of {how} (--unitablate-"
                             f"full-sweeps evaluates them all)")
            if check.mode == "any_unit":
                layer = judge_any_unit(constraint, per_unit, at_least=check.at_least,
                                       level=level, total=total)
            else:
                layer = judge_every_unit(constraint, per_unit, level=level, total=total)
            m, notes = layer.decider, list(layer.notes) + notes
        else:
            chosen, notes = self._top_units(session, request)
            ablated = session.ablated(spec, check, request, units=chosen)
            m = Measurement.from_correct(base_correct, ablated.correct[mask], level=level,
                                         units=tuple(chosen))
        deciding = layer.deciding if layer is not None else (
            list(m.units) if check.mode == "top_units" else None)
        self._record_measurement(state, session, request, m, layer, deciding)
        self._judge(state, m, deciding, notes)

    def _identity_units(self, state: PluginState, session: Any,
                        request: pytest.FixtureRequest, notes: list[str]) -> list[int] | None:
        """For ``identity: signature``: the units of the model under test that match the
        check's recorded units (one-to-one across the layer's recorded units), or ``None``
        (this run uses the indices: record mode is recording their signatures now).

        A recorded unit whose best possible partner is below ``min_similarity`` fails the
        item: the unit the check protects is gone.
        """
        spec, check = self.spec, self.key.check
        recording = state.record_mode != "none"
        signatures = session.signatures(spec, recording=recording)
        recorded = signatures.units(check.layer) if signatures is not None else {}
        missing = [u for u in check.units if u not in recorded]
        self._set_props({"identity": "signature", "min_similarity": check.min_similarity,
                         "recorded_units": list(check.units)})
        if missing:
            if not recording:
                raise ItemProblem(
                    f"{spec.where(check.identity_line)}: identity: signature, but no "
                    f"signature of {check.layer} unit(s) {missing} is recorded in "
                    f"{spec.signatures_path()}; record it (from the reference model) with: "
                    f"{state.rerun_command('new')}")
            session.check_units(spec, check, request)
            profiles = session.profiles(spec, check, request)
            self._set_props({
                "signature": {str(u): [float(v) for v in profiles[u]] for u in check.units},
                "signatures_file": str(spec.signatures_path()),
                "signature_classes": list(spec.classes) if spec.classes else None,
                "signature_data_sha256": session.baseline(spec, request).fingerprint})
            notes.append(f"identity: signature: no signature recorded yet for unit(s) "
                         f"{missing}; this run takes the indices as they are and record mode "
                         f"writes the signatures")
            return None
        matches = session.match(spec, check, request)
        if signatures is not None and signatures.data_sha256 and \
                signatures.data_sha256 != session.baseline(spec, request).fingerprint and \
                str(spec.path) not in state.signature_data_warned:
            state.signature_data_warned.add(str(spec.path))
            self.warn(UnitAblateWarning(
                f"{spec.where(spec.signatures_line)}: the signatures were recorded on other "
                f"evaluation data (fingerprint {signatures.data_sha256[:12]}...); profiles "
                f"are class averages, so matching still works, but re-record to silence this"))
        mapped = [matches[u] for u in check.units]
        self._set_props({
            "matched_units": [m.unit for m in mapped],
            "similarity": [round(m.similarity, 4) if m.unit is not None else None
                           for m in mapped],
            "mapping": "; ".join(m.describe() for m in mapped)})
        gone = [m for m in mapped if m.unit is None or m.similarity < check.min_similarity]
        if gone:
            raise ThresholdMiss(no_match_text(
                spec.where(check.identity_line or check.line), self.key.id, check.layer,
                gone, check.min_similarity, matches))
        notes.insert(0, "identity: signature: " + "; ".join(m.describe() for m in mapped))
        return [int(m.unit) for m in mapped if m.unit is not None]

    def _stops_early(self, state: PluginState) -> bool:
        """Early stopping needs a threshold to decide against, and record mode needs every
        unit (the bound it writes is the best or worst of all)."""
        return (not state.settings.full_sweeps and state.record_mode == "none"
                and self.key.constraint.threshold is not None)

    def _warn_engine(self, sweep: Any) -> None:
        """A sweep that fell back to the naive engine is slow: say so, once per layer (not
        when the naive loop was chosen because it measured faster)."""
        state = get_state(self.config)
        layer = (str(self.spec.path), self.key.check.layer)
        refused = sweep.reason and "measured on the first batch" not in sweep.reason
        if "naive" in sweep.method and refused and layer not in state.engine_warned:
            state.engine_warned.add(layer)
            self.warn(UnitAblateWarning(
                f"{self.spec.where(self.key.check.layer_line)}: the sweep of "
                f"{self.key.check.layer} used the naive engine (one forward per unit): "
                f"{sweep.reason}"))

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

    def _top_units(self, session: Any, request: pytest.FixtureRequest
                   ) -> tuple[list[int], list[str]]:
        """The ``top_units`` units, ranked by their single-unit drop of the top class."""
        spec, check = self.spec, self.key.check
        assert check.top_class is not None and check.top_units is not None
        ranking = spec.ranking_data is not None
        rank_base = session.baseline(spec, request, ranking=ranking)
        sweep = session.sweep(spec, check, request, ranking=ranking)
        rmask = rank_base.labels == spec.class_index(check.top_class)
        drops = class_drops(rank_base.correct[rmask],
                            ((sweep.predictions[i] == sweep.labels)[rmask]
                             for i in range(len(sweep.units))))
        self._set_props({"engine": sweep.method, "engine_reason": sweep.reason or None,
                         "engine_plan": sweep.plan or None})
        self._warn_engine(sweep)
        chosen = rank_top_units(list(sweep.units), drops, check.top_units)
        name = spec.target_name(check.top_class)
        note = ranking_note(list(sweep.units), drops, check.top_units, name)
        self._set_props({"ranking_note": note})
        source = "the ranking_data split" if ranking else "the evaluation data (no ranking_data)"
        notes = [f"units ranked by their drop of {name} on {source}"]
        return chosen, notes + ([f"ranking: {note}"] if note else [])

    def _record_measurement(self, state: PluginState, session: Any,
                            request: pytest.FixtureRequest, m: Measurement,
                            layer: LayerVerdict | None, deciding: list[int] | None) -> None:
        """Ship the numbers as ``user_properties`` (JSON report, JUnit, xdist, record)."""
        kind = self.key.constraint.kind
        measured: dict[str, Any] = {
            "n": m.n, "baseline": m.baseline, "ablated": m.ablated, "drop": m.drop,
            "ci_low": m.ci[0], "ci_high": m.ci[1], "ci_level": m.ci_level,
            "p_value": m.p_value,
            "relative_drop": m.value("min_relative_drop"),
            "record_value": record_value(kind, m, state.record_level)
            if layer is None else layer.record_value,
            "deciding_units": deciding,
            "torch_version": str(sys.modules["torch"].__version__),
            "dtype": session.dtype,
        }
        if self.key.check.mode == "top_units":
            measured["units"] = deciding
        if state.record_mode != "none":
            measured.update(session.hashes(self.spec, request))
        self._set_props(measured)

    def _judge(self, state: PluginState, m: Measurement, deciding: list[int] | None,
               notes: list[str]) -> None:
        spec, key = self.spec, self.key
        constraint = key.constraint
        mode = state.record_mode
        verdict = judge(constraint, m) if constraint.threshold is not None else None
        if verdict is not None:
            self._set_props({"outcome_margin": verdict.margin})
        ctx = FailureContext(
            where=spec.where(key.line), head=key.check_part,
            ablation=spec.ablation_for(key.check).label(),
            target=spec.target_name(key.expectation.target),
            hint=state.rerun_command("failed"), deciding=deciding, notes=notes)
        if writes(mode, has_threshold=verdict is not None,
                  failing=verdict is not None and not verdict.passed):
            self._refuse_vacuous(state, ctx, m)
        if verdict is None:
            if mode in ("new", "all"):
                return
            raise ThresholdMiss(missing_threshold_text(
                spec.where(key.line), key.id, constraint.kind, m,
                state.rerun_command("new")))
        if mode == "all":
            return
        if not verdict.passed:
            raise ThresholdMiss(failure_text(ctx, constraint, m, verdict))
        if verdict.warn:
            self.warn(UnitAblateWarning(warn_text(spec.where(key.line), key.id, constraint,
                                                  verdict)))

    def _refuse_vacuous(self, state: PluginState, ctx: FailureContext, m: Measurement) -> None:
        """Record mode never writes a threshold that could not fail: the item fails instead,
        says why, and the summary lists it (the threshold in the spec stays as it was)."""
        value = self.unitablate_record.get("record_value")
        if value is None:
            return
        kind = self.key.constraint.kind
        written = rounded_threshold(kind, float(value))
        reason = vacuous_threshold(kind, written, m.baseline, state.settings.record_floor)
        if reason is None:
            return
        text = disarmed_text(ctx, kind, m, reason)
        self._set_props({"record_value": None, "disarmed": text})
        raise ThresholdMiss(text)

    def _check_provenance(self, session: Any, request: pytest.FixtureRequest) -> None:
        """Warn once per spec when its recorded environment differs from this run's."""
        recorded = dict(self.spec.provenance)
        current: dict[str, str] = {
            "torch_version": str(sys.modules["torch"].__version__),
            "device": session.device, "dtype": str(session.dtype),
        }
        if "data_sha256" in recorded or "weights_sha256" in recorded:
            current.update(session.hashes(self.spec, request))
        lines = provenance_mismatches(recorded, current)
        if lines:
            self.warn(UnitAblateWarning(
                f"{self.spec.path}: thresholds were recorded in another environment "
                f"({'; '.join(lines)}); re-record if the differences are intended"))

    # --- reporting ----------------------------------------------------------------------

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        if isinstance(excinfo.value, (ThresholdMiss, ItemProblem)):
            return str(excinfo.value)
        if not self.config.getoption("unitablate_full_trace", False):
            return (f"{self.spec.where(self.key.line)}: unexpected error while running "
                    f"{self.key.id}: {type(excinfo.value).__name__}: {excinfo.value}\n"
                    f"  (rerun with --unitablate-full-trace for the traceback)")
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int, str]:
        """Path, 0-based line and the failure headline.

        The headline is not a suffix of the node id on purpose: pytest's terminal rewrites a
        suffix domain's dots into ``::`` (it expects ``Class.method``), which would turn the
        layer ``layer3.0`` into ``layer3::0`` in ``-v`` output.
        """
        line = self.key.line
        return self.path, line - 1, f"{self.key.id} ({self.path.name}:{line})"


__all__ = ["ThresholdMiss", "UnitAblateItem", "run_spec_item"]
