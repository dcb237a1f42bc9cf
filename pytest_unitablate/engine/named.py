"""A layer's named checks evaluated together: one scan instead of one forward per check.

A spec often names many units of one layer (``units: [245]``, ``units: [12]``, ...). Each
check needs the whole evaluation data with its units ablated; one full forward pass per
check repeats the network before the layer every time. When the first such check of a
layer runs, :class:`NamedChecks` plans every named check of that layer with the same
ablation (index units as written; ``identity: signature`` units once they are matched)
and evaluates them all in one :func:`~pytest_unitablate.core.scan.scan`, each check's
units ablated together in one row: the network before the layer runs once per batch (or
not at all, when the baseline pass kept it), the rows share suffix passes, and where the
network after the layer is affine the closed form needs no extra forward. Each row is
stored under the same key as a plain pass, so a store filled either way serves both.
``EngineSettings(plain_passes=True)`` (``--unitablate-plain-passes``) goes back to one
forward per check.

Example::

    named = NamedChecks(evals, matching)
    result = named.ablated(spec, subject, check, check.units)   # EvalResult
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pytest_unitablate.core.evaluation import EvalResult
from pytest_unitablate.core.scan import scan
from pytest_unitablate.engine.evaluations import (
    Evaluations,
    eval_arrays,
    eval_result,
    row_result,
)
from pytest_unitablate.engine.matching import Matching
from pytest_unitablate.engine.refs import Subject
from pytest_unitablate.errors import ItemProblem
from pytest_unitablate.spec.model import Check, Spec


class NamedChecks:
    """Ablated passes of named checks, planned and evaluated layer by layer."""

    def __init__(self, evals: Evaluations, matching: Matching) -> None:
        self.evals = evals
        #: the matches of ``identity: signature`` checks, once made
        self.matching = matching

    def ablated(self, spec: Spec, subject: Subject, check: Check,
                units: Sequence[int]) -> EvalResult:
        """The evaluation with ``units`` of the check's layer ablated together."""
        ev = self.evals
        key = ev.ablated_memo(spec, subject, check, units)
        found = ev.recall(key)
        if found is not None:
            return found
        group = [v for v in self.plan(spec, subject, check, units)
                 if ev.recall(ev.ablated_memo(spec, subject, check, v)) is None]
        for variant, result in zip(group, self._evaluate(spec, subject, check, group),
                                   strict=True):
            ev.remember(ev.ablated_memo(spec, subject, check, variant), result)
        found = ev.recall(key)
        assert found is not None
        return found

    def plan(self, spec: Spec, subject: Subject, check: Check,
             units: Sequence[int]) -> list[tuple[int, ...]]:
        """The unit sets to evaluate with ``units``: those of every named check of the
        layer with the same ablation (signature checks once matched), in a fixed order."""
        ev = self.evals
        arg = ev.ablation_memo(spec, subject, check)
        layer_units = ev.units(spec, subject, check)
        channels = layer_units.count
        wanted = {tuple(sorted(set(units)))}
        for other in spec.checks:
            if other.mode != "units" or other.layer != check.layer or \
                    ev.ablation_memo(spec, subject, other) != arg or \
                    not self._same_units(spec, subject, other, layer_units.memo):
                continue
            chosen = self._matched(spec, subject, other) if other.identity == "signature" \
                else other.units
            if chosen and all(0 <= u < channels for u in chosen):
                wanted.add(tuple(sorted(set(chosen))))
        return sorted(wanted)

    def _same_units(self, spec: Spec, subject: Subject, other: Check,
                    memo: tuple[Any, ...]) -> bool:
        """Whether ``other`` addresses the layer's units as the planned check does (its own
        problems are its item's to report, not this one's)."""
        try:
            return self.evals.units(spec, subject, other).memo == memo
        except ItemProblem:
            return False

    def _matched(self, spec: Spec, subject: Subject, check: Check) -> tuple[int, ...] | None:
        """The units a signature check's recorded units matched, when the match was made
        already (planning never makes one: its profile pass is the check's to pay)."""
        matches = self.matching.made(spec, subject, check)
        if matches is None or any(u not in matches for u in check.units):
            return None
        mapped = [matches[u] for u in check.units]
        units = tuple(m.unit for m in mapped if m.unit is not None)
        if len(units) < len(mapped) or any(m.similarity < check.min_similarity
                                           for m in mapped):
            return None
        return units

    def _evaluate(self, spec: Spec, subject: Subject, check: Check,
                  group: list[tuple[int, ...]]) -> list[EvalResult]:
        """One scan of the layer with a row per unit set, through the store (each row under
        the key of the plain pass it replaces)."""
        ev = self.evals
        baseline = ev.baseline(spec, subject)
        keys = [ev.ablated_key(spec, subject, check, v) for v in group]

        def compute(missing: list[int]) -> list[dict[str, Any]]:
            todo = [group[i] for i in missing]
            values = ev.ablation_values(spec, subject, check)

            def run() -> Any:
                ev.seeded()
                ev.check_model(subject.model, spec)
                factory = ev.settings.progress
                label = f"{spec.path.name} {check.layer} ({len(todo)} named check(s))"
                lines = factory(label, len(todo) * baseline.n) if factory else None
                rows = [v[0] if len(v) == 1 else v for v in todo]  # named as plain passes
                return scan(subject.model, subject.data, check.layer, units=rows,
                            **values, device=ev.device,
                            output=spec.output, **ev.units(spec, subject, check).core_args(),
                            memory_budget=ev.settings.memory_budget,
                            progress=lines if lines is not None else False,
                            prefix_cache=ev.prefixes)

            result = ev.located(spec, run, check.layer_line)
            ev.paired(spec, baseline, result.baseline,
                      f"the pass with {check.layer} units {list(todo[0])} ablated")
            return [eval_arrays(row_result(result, j)) for j in range(len(todo))]

        return [eval_result(v) for v in ev.store.get_or_compute_many(keys, compute)]


__all__ = ["NamedChecks"]
