"""The spec-file collector and the test item (torch-free at import).

Collection route: a :class:`SpecFile` (a ``pytest.File``) yields one
:class:`UnitAblateItem` per constraint. The item is a real ``pytest.Function`` built with
the public ``Function.from_parent(..., callobj=...)`` constructor, so the spec's model and
data fixtures resolve through pytest's own fixture machinery (``request.getfixturevalue``)
without private APIs (custom ``Item`` subclasses get no fixtures: pytest#2471, #3639).

Example (what pytest does)::

    spec_file = SpecFile.from_parent(session, path=Path("specs/resnet.yaml"))
    items = list(spec_file.collect())   # one item per constraint: conv5[245]-seven-min_drop
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_unitablate.errors import SpecError
from pytest_unitablate.ids import ItemKey, item_ids
from pytest_unitablate.measure import DEFAULT_LEVEL, Measurement, Verdict, judge, record_value
from pytest_unitablate.runtime import ItemProblem, class_index, where
from pytest_unitablate.spec_model import OVERALL, Spec

PROP_PREFIX = "unitablate."


class ThresholdMiss(Exception):
    """A failed expectation: an ordinary test failure with a readable message."""


def _pct(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x * 100:.1f}"


class SpecFile(pytest.File):
    """A spec file: parsed and validated at collection; problems are collection errors."""

    def collect(self) -> Iterator[pytest.Item]:
        from pytest_unitablate.spec_loader import load_spec

        shown = _display_path(self.path, self.config.invocation_params.dir)
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise self.CollectError(f"{shown}:0: cannot read the spec: {exc}") from None
        try:
            spec = load_spec(shown, text=text)
        except SpecError as exc:
            raise self.CollectError(
                f"{len(exc.problems)} problem(s) in spec {shown}:\n{exc}"
            ) from None
        keys = item_ids(spec)
        if not keys:
            raise self.CollectError(f"{shown}:1: the spec yields no test items")
        for key in keys:
            item = UnitAblateItem.from_parent(
                self, name=key.id, callobj=_run_spec_item, originalname=key.id
            )
            item.setup_spec(spec, key)
            yield item


def _run_spec_item(request: pytest.FixtureRequest) -> None:
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
        self.add_marker(pytest.mark.unitablate)
        self.add_marker(pytest.mark.xdist_group(name=str(spec.path)))
        for mark in key.check.marks:
            self.add_marker(getattr(pytest.mark, mark.name)(*mark.args, **dict(mark.kwargs)))
        check, target = key.check, key.expectation.target
        static: dict[str, Any] = {
            "id": key.id,
            "spec": str(spec.path),
            "spec_file": str(self.path),
            "line": key.line,
            "layer": check.layer,
            "mode": check.mode,
            "units": list(check.units) if check.mode == "units" else None,
            "ablation": spec.ablation_for(check).label(),
            "target": _target_name(spec, target),
            "class_index": class_index(spec, target),
            "constraint": key.constraint.kind,
            "threshold": key.constraint.threshold,
            "check_index": check.index,
            "mode_key": check.mode_key,
            "target_key": target,
        }
        self._set_props(static)

    def _set_props(self, values: dict[str, Any]) -> None:
        props = dict(self.user_properties)
        for name, value in values.items():
            if isinstance(value, (list, tuple, dict)):
                value = json.dumps(value)
            props[PROP_PREFIX + name] = value
        self.user_properties[:] = list(props.items())

    # --- running ------------------------------------------------------------------------

    def run_check(self, request: pytest.FixtureRequest) -> None:
        from pytest_unitablate.plugin import get_state

        state = get_state(self.config)
        session = state.runtime()
        spec, key = self.spec, self.key
        check, constraint = key.check, key.constraint
        target = key.expectation.target
        here = where(spec, key.line)
        baseline = session.baseline(spec, request)
        if spec.provenance and str(spec.path) not in state.provenance_checked:
            state.provenance_checked.add(str(spec.path))
            self._check_provenance(session, request)
        k = class_index(spec, target)
        if k is not None:
            if k >= baseline.num_classes:
                raise ItemProblem(
                    f"{where(spec, key.expectation.line)}: class index {k} "
                    f"({_target_name(spec, target)}) is out of range: the model has "
                    f"{baseline.num_classes} outputs (0..{baseline.num_classes - 1})"
                )
            count = int(baseline.class_counts[k])
            if count < max(spec.min_examples, 1):
                raise ItemProblem(
                    f"{where(spec, key.expectation.line)}: class {_target_name(spec, target)} "
                    f"has {count} example(s) in the evaluation data; the spec needs at least "
                    f"{max(spec.min_examples, 1)} (min_examples)"
                )
        mask = slice(None) if k is None else (baseline.labels == k)
        self._check_supportable(baseline.correct[mask])
        level = constraint.confidence or state.record_level
        deciding: list[int] | None = None
        notes: list[str] = []

        if check.mode == "units":
            session.check_units(spec, check, request)
            ablated = session.ablated(spec, check, request)
            m = Measurement.from_correct(baseline.correct[mask], ablated.correct[mask],
                                         level=level, units=check.units)
        elif check.mode in ("any_unit", "every_unit"):
            sweep = session.sweep(spec, check, request)
            per_unit = [
                Measurement.from_correct(
                    baseline.correct[mask], (sweep.predictions[i] == sweep.labels)[mask],
                    level=level, units=(u,))
                for i, u in enumerate(sweep.units)
            ]
            m, deciding, notes = self._layer_wide(per_unit, level)
        else:  # top_units
            m, deciding, notes = self._top_units(session, request, baseline, mask, level)

        measured: dict[str, Any] = {
            "n": m.n, "baseline": m.baseline, "ablated": m.ablated, "drop": m.drop,
            "ci_low": m.ci[0], "ci_high": m.ci[1], "ci_level": m.ci_level,
            "p_value": m.p_value,
            "relative_drop": m.value("min_relative_drop"),
            "record_value": record_value(constraint.kind, m, state.record_level)
            if deciding is None else self._record_value_layer,
            "deciding_units": deciding,
        }
        if check.mode == "top_units":
            measured["units"] = deciding
        import sys

        measured["torch_version"] = str(sys.modules["torch"].__version__)
        measured["dtype"] = session.dtype
        if state.record_mode != "none":
            measured.update(session.hashes(spec, request))
        self._set_props(measured)
        if constraint.threshold is None:
            if state.record_mode in ("new", "all"):
                return
            raise ThresholdMiss(
                f"{here}: {key.id}: no threshold recorded yet ({constraint.kind}: null); "
                f"measured drop {_pct(m.drop)} pp\n"
                f"  To record it: {state.rerun_command(spec, key.id, 'new')}"
            )
        verdict = judge(constraint, m)
        self._set_props({"outcome_margin": verdict.margin})
        if state.record_mode == "all":
            return
        if not verdict.passed:
            raise ThresholdMiss(self._failure_text(m, verdict, deciding, notes, state))
        if verdict.warn:
            from pytest_unitablate.plugin import UnitAblateWarning

            self.warn(UnitAblateWarning(
                f"{here}: {key.id} passes by only {verdict.margin * 100:.1f} pp "
                f"(warn_margin {constraint.warn_margin * 100 if constraint.warn_margin else 0:g}"
                f"%)"))

    _record_value_layer: float | None = None

    def _check_supportable(self, correct: Any) -> None:
        """A ``min_*`` threshold that even a total collapse could not meet is an error."""
        c = self.key.constraint
        if c.threshold is None or not c.kind.startswith("min"):
            return
        hits, n = int(correct.sum()), len(correct)
        best = Measurement.from_correct([True] * hits + [False] * (n - hits),
                                        [False] * n, level=c.confidence or DEFAULT_LEVEL)
        reach = best.bound(c.kind, c.confidence) if c.confidence else best.value(c.kind)
        if reach + 1e-12 < c.threshold:
            what = "the point estimate" if c.confidence is None else (
                f"the {c.confidence * 100:g}% lower bound")
            raise ItemProblem(
                f"{where(self.spec, self.key.line)}: {self.key.id}: the target has {n} "
                f"example(s), {hits} right at baseline; even if every one were lost, "
                f"{what} would be {reach * 100:.1f}, below the required "
                f"{c.threshold * 100:.1f}. Use more examples or a lower threshold.")

    def _check_provenance(self, session: Any, request: pytest.FixtureRequest) -> None:
        """Warn once per spec when its recorded environment differs from this run's."""
        import sys

        from pytest_unitablate.plugin import UnitAblateWarning
        from pytest_unitablate.record import provenance_mismatches

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

    def _layer_wide(self, per_unit: list[Measurement], level: float
                    ) -> tuple[Measurement, list[int], list[str]]:
        check, constraint = self.key.check, self.key.constraint
        kind = constraint.kind
        sign = 1.0 if kind.startswith("min") else -1.0
        # Rank units from best to worst for this constraint.
        ranked = sorted(per_unit, key=lambda mm: (-sign * mm.value(kind), mm.units))
        bounds = sorted((mm.bound(kind, level) for mm in per_unit), key=lambda b: -sign * b)
        if check.mode == "any_unit":
            k = min(check.at_least, len(ranked))
            decider = ranked[k - 1]
            deciding = [mm.units[0] for mm in ranked[:k]]
            self._record_value_layer = bounds[k - 1]
            passing = None
            if constraint.threshold is not None:
                passing = sum(judge(constraint, mm).passed for mm in per_unit)
            notes = [f"{passing} of {len(per_unit)} units meet it; at least {check.at_least} "
                     f"needed"] if passing is not None else []
        else:
            decider = sorted(per_unit, key=lambda mm: (sign * mm.value(kind), mm.units))[0]
            deciding = [decider.units[0]]
            self._record_value_layer = bounds[-1]
            failing = []
            if constraint.threshold is not None:
                failing = [mm.units[0] for mm in per_unit if not judge(constraint, mm).passed]
            notes = [f"{len(failing)} of {len(per_unit)} units miss it"
                     + (f": {failing[:20]}{' ...' if len(failing) > 20 else ''}"
                        if failing else "")]
        return decider, deciding, notes

    def _top_units(self, session: Any, request: pytest.FixtureRequest, baseline: Any,
                   mask: Any, level: float) -> tuple[Measurement, list[int], list[str]]:
        import numpy as np

        spec, check = self.spec, self.key.check
        ranking = spec.ranking_data is not None
        rank_base = session.baseline(spec, request, ranking=ranking)
        sweep = session.sweep(spec, check, request, ranking=ranking)
        top = class_index(spec, check.top_class) if check.top_class is not None else None
        assert top is not None and check.top_units is not None
        rmask = rank_base.labels == top
        base_acc = rank_base.correct[rmask].mean() if rmask.any() else 0.0
        drops = [base_acc - (sweep.predictions[i] == sweep.labels)[rmask].mean()
                 for i in range(len(sweep.units))]
        order = sorted(range(len(drops)), key=lambda i: (-drops[i], sweep.units[i]))
        chosen = sorted(sweep.units[i] for i in order[: check.top_units])
        ablated = session.ablated(spec, check, request, units=chosen)
        m = Measurement.from_correct(baseline.correct[mask], ablated.correct[mask],
                                     level=level, units=tuple(chosen))
        source = "the ranking_data split" if ranking else "the evaluation data (no ranking_data)"
        notes = [f"units ranked by their drop of {_target_name(spec, check.top_class)} on "
                 f"{source}"]
        del np
        return m, chosen, notes

    def _failure_text(self, m: Measurement, v: Verdict, deciding: list[int] | None,
                      notes: list[str], state: Any) -> str:
        spec, key = self.spec, self.key
        check, c = key.check, key.constraint
        target = _target_name(spec, key.expectation.target)
        what = "overall accuracy" if target == OVERALL else f"class {target!r}"
        ab = spec.ablation_for(check).label()
        head = key.id.rsplit("-", 2)[0]
        unit_text = ""
        if deciding is not None:
            label = "deciding unit" if len(deciding) == 1 else "deciding units"
            unit_text = f"   {label}: {', '.join(map(str, deciding))}"
        hits_b = m.table.a + m.table.b
        hits_a = m.table.a + m.table.c
        lo, hi = m.ci
        required = c.describe()
        miss = -v.margin * 100
        lines = [
            f"{where(spec, key.line)}: {head} ({ab} ablation): {what} must have {required}",
            f"  baseline {_pct(m.baseline)}% ({hits_b}/{m.n})   ablated {_pct(m.ablated)}% "
            f"({hits_a}/{m.n})   n={m.n}{unit_text}",
            f"  drop     {_pct(m.drop)} pp   {m.ci_level * 100:g}% CI [{_pct(lo)}, {_pct(hi)}] pp "
            f"(paired, Newcombe)   required {required}   missed by {miss:.1f} "
            f"{'points' if 'relative' in c.kind else 'pp'} (judged on the {v.by})",
        ]
        if "relative" in c.kind:
            lines.append(f"  relative drop {_pct(m.value(c.kind))}% of the baseline")
        lines.append(f"  McNemar exact p={m.p_value:.3g} ({m.table.b} flipped to wrong, "
                     f"{m.table.c} to right)")
        lines.extend(f"  {note}" for note in notes)
        lines.append(f"  To re-record: {state.rerun_command(spec, key.id, 'failed')}")
        return "\n".join(lines)

    # --- reporting ----------------------------------------------------------------------

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        if isinstance(excinfo.value, (ThresholdMiss, ItemProblem)):
            return str(excinfo.value)
        if not self.config.getoption("unitablate_full_trace", False):
            return (f"{where(self.spec, self.key.line)}: unexpected error while running "
                    f"{self.key.id}: {type(excinfo.value).__name__}: {excinfo.value}\n"
                    f"  (rerun with --unitablate-full-trace for the traceback)")
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int, str]:
        return self.path, self.key.line - 1, self.key.id


def _display_path(path: Path, start: Path) -> str:
    """``path`` relative to where pytest was invoked, when it lies below it."""
    try:
        return str(path.relative_to(start))
    except ValueError:
        return str(path)


def _target_name(spec: Spec, target: str | int | None) -> str:
    if target is None:
        return "?"
    if isinstance(target, int) and spec.classes is not None and target < len(spec.classes):
        return spec.classes[target]
    return str(target)


__all__ = ["DEFAULT_LEVEL", "SpecFile", "ThresholdMiss", "UnitAblateItem"]
