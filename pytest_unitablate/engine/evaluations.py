"""Every evaluation a spec needs, computed once: baselines, ablated passes, channel means.

An :class:`Evaluations` lives as long as its engine (one per pytest process, one per
``run_spec`` call). Each result is memoised in memory, keyed by the model and data
objects, and goes through the engine's :class:`~pytest_unitablate.engine.store.Store`
first, keyed by :meth:`Evaluations.identity` (weights, structure, data fingerprint,
versions) plus what was evaluated. Before any number is compared, every pass is checked
to have replayed the baseline's examples in the baseline's order.

Errors of the core become located :class:`~pytest_unitablate.errors.ItemProblem` s at the
spec line that causes them: NaN logits at ``model:``, an output without one logits tensor
at ``output:``, anything the model's forward raises on the data at ``data:``.

Example::

    evals = Evaluations(EngineSettings(device="cpu", seed=0), NullStore())
    base = evals.baseline(spec, subject)                 # EvalResult
    ablated = evals.ablated(spec, subject, check)        # the check's units ablated
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pytest_unitablate.core.ablation import ablate, channel_means
from pytest_unitablate.core.evaluation import EvalResult
from pytest_unitablate.core.heads import head_means

#: The check modes whose layers are swept unit by unit on the evaluation data.
from pytest_unitablate.engine.baselines import (
    ENTRY_FORMAT,
    SWEPT,
    Baselines,
    checkpoint_of,
    eval_arrays,
    eval_result,
    row_result,
)
from pytest_unitablate.engine.refs import Subject
from pytest_unitablate.spec.model import Check, Spec


class Evaluations(Baselines):
    """Baselines (:class:`~pytest_unitablate.engine.baselines.Baselines`), ablated passes,
    channel means, resample sources and the store keys of each."""

    def ablation_arg(self, spec: Spec, check: Check) -> str | float:
        """The check's ablation as the core takes it: ``"zero"``, ``"mean"``,
        ``"resample"`` or a number."""
        ab = spec.ablation_for(check)
        return float(ab.value) if ab.kind == "constant" and ab.value is not None else ab.kind

    def reference_data(self, spec: Spec, subject: Subject, check: Check) -> tuple[Any, bool]:
        """The data the check's ``mean`` and ``resample`` ablation take values from, and
        whether it was declared (``reference:``) rather than the evaluation data."""
        ref, _ = spec.reference_for(check)
        if ref is None:
            return subject.data, False
        return subject.references[ref], True

    def ablation_memo(self, spec: Spec, subject: Subject, check: Check) -> tuple[Any, ...]:
        """What decides an ablated pass besides the units, for in-memory keys: the
        ablation, its draws, and the reference data it takes values from."""
        arg = self.ablation_arg(spec, check)
        if arg not in ("mean", "resample"):
            return (arg,)
        data, declared = self.reference_data(spec, subject, check)
        return (arg, spec.ablation_for(check).draws, id(data) if declared else None)

    def ablation_key(self, spec: Spec, subject: Subject, check: Check) -> dict[str, Any]:
        """The same for the store's keys: the reference data by its fingerprint (so a
        changed reference set never reads another's entries)."""
        arg = self.ablation_arg(spec, check)
        key: dict[str, Any] = {"ablation": arg}
        if arg in ("mean", "resample"):
            data, declared = self.reference_data(spec, subject, check)
            if declared:
                key["reference"] = self.identity(spec, subject.model, data)["data"]
            if arg == "resample":
                key["draws"] = spec.ablation_for(check).draws
        return key

    def layer_means(self, spec: Spec, check: Check, subject: Subject) -> dict[str, Any]:
        """The means of the check's units over its reference data (the evaluation data
        unless ``reference:`` names other data): per channel, or per feature of the heads'
        concatenated output."""
        model = subject.model
        data, _ = self.reference_data(spec, subject, check)
        units = self.units(spec, subject, check)
        key = (id(model), id(data), units.memo)
        if key not in self._means:
            def compute() -> Any:
                if units.unit == "head":
                    return head_means(model, data, check.layer, num_heads=units.num_heads,
                                      device=self.device)
                return channel_means(model, data, [check.layer],
                                     channel_dim=units.channel_dim,
                                     device=self.device)[check.layer]

            def run() -> dict[str, Any]:
                return {"means": self.located(spec, compute, self._reference_line(
                    spec, check), data=self._reference_of(spec, check)).cpu().numpy()}

            identity = self.identity(spec, model, data)
            values = self.store.get_or_compute(
                {**identity, "what": "means", **units.key()}, run)
            self._means[key] = {check.layer: torch.from_numpy(values["means"])}
        result: dict[str, Any] = self._means[key]
        return result

    def _reference_of(self, spec: Spec, check: Check) -> tuple[str, int] | None:
        """The declared reference and its line, for messages (None: the evaluation data)."""
        ref, line = spec.reference_for(check)
        return (ref, line) if ref is not None else None

    def _reference_line(self, spec: Spec, check: Check) -> int:
        ref, line = spec.reference_for(check)
        return line if ref is not None else check.layer_line

    def resample_sources(self, spec: Spec, subject: Subject, check: Check) -> list[Any]:
        """One :class:`~pytest_unitablate.core.resample.ResampleSource` per draw of the
        check's ``resample`` ablation: the layer's values on the reference data (cached
        per model, data and layer), and each draw's index by the documented rule."""
        from pytest_unitablate.core.heads import head_values
        from pytest_unitablate.core.resample import ResampleSource, layer_values, resample_index

        model = subject.model
        data, declared = self.reference_data(spec, subject, check)
        units = self.units(spec, subject, check)
        key = ("resample", id(model), id(data), units.memo)
        if key not in self.objects:
            def compute() -> Any:
                self.seeded()
                if units.unit == "head":
                    return head_values(model, data, check.layer, num_heads=units.num_heads,
                                       device=self.device)
                return layer_values(model, data, check.layer, device=self.device)

            self.objects[key] = self.located(spec, compute, self._reference_line(spec, check),
                                             data=self._reference_of(spec, check))
        values = self.objects[key]
        n = self.baseline(spec, subject).n
        seed = self.settings.seed or 0
        draws = spec.ablation_for(check).draws
        sources: list[Any] = self.guard(spec, self._reference_line(spec, check), lambda: [
            ResampleSource(values, resample_index(n, int(values.shape[0]), draw=d, seed=seed,
                                                  same_data=not declared))
            for d in range(draws)])
        return sources

    def ablation_values(self, spec: Spec, subject: Subject, check: Check) -> dict[str, Any]:
        """``scan()``'s and ``ablate()``'s keyword arguments for the check's ablation:
        the ablation, and its means or resample sources."""
        arg = self.ablation_arg(spec, check)
        out: dict[str, Any] = {"ablation": arg}
        if arg == "mean":
            out["means"] = self.layer_means(spec, check, subject)
        elif arg == "resample":
            out["resample"] = self.resample_sources(spec, subject, check)
        return out

    def ablated(self, spec: Spec, subject: Subject, check: Check,
                units: Sequence[int] | None = None) -> EvalResult:
        """Evaluation with ``units`` (default: the check's) of the check's layer ablated,
        one full forward pass per batch (per draw, for ``resample``)."""
        model, data = subject.model, subject.data
        chosen = tuple(check.units if units is None else units)
        arg = self.ablation_arg(spec, check)
        key = self.ablated_memo(spec, subject, check, chosen)
        if key not in self._evals:
            baseline = self.baseline(spec, subject)

            def run() -> dict[str, Any]:
                values = self.ablation_values(spec, subject, check)
                core = self.units(spec, subject, check).core_args()

                def forward() -> EvalResult:
                    if arg == "resample":  # one pass per draw: the scan's naive loop
                        from pytest_unitablate.core.scan import scan

                        row = scan(model, data, check.layer, units=[chosen],
                                   device=self.device, output=spec.output, progress=False,
                                   method="naive", **core, **values)
                        return row_result(row, 0)
                    with ablate(model, {check.layer: list(chosen)}, **values, **core):
                        return self._evaluate(model, data, spec.output, spec=spec)

                result: EvalResult = self.located(spec, forward, check.layer_line)
                self.paired(spec, baseline, result,
                            f"the pass with {check.layer} units {list(chosen)} ablated")
                return eval_arrays(result)

            values = self.store.get_or_compute(self.ablated_key(spec, subject, check, chosen),
                                               run)
            self._evals[key] = eval_result(values)
        return self._evals[key]

    def ablated_memo(self, spec: Spec, subject: Subject, check: Check,
                     units: Sequence[int]) -> tuple[Any, ...]:
        """The in-memory key of the pass with ``units`` of the check's layer ablated."""
        return ("abl", id(subject.model), id(subject.data),
                self.units(spec, subject, check).memo, tuple(sorted(set(units))),
                self.ablation_memo(spec, subject, check))

    def recall(self, key: tuple[Any, ...]) -> EvalResult | None:
        """An evaluation made before under the in-memory ``key``, if any."""
        return self._evals.get(key)

    def remember(self, key: tuple[Any, ...], result: EvalResult) -> None:
        """Keep ``result`` under the in-memory ``key``."""
        self._evals[key] = result

    def ablated_key(self, spec: Spec, subject: Subject, check: Check,
                    units: Sequence[int]) -> dict[str, Any]:
        """The store key of the pass with ``units`` of the check's layer ablated."""
        return {**self.identity(spec, subject.model, subject.data), "what": "ablated",
                **self.units(spec, subject, check).key(), "units": sorted(set(units)),
                **self.ablation_key(spec, subject, check)}


__all__ = ["ENTRY_FORMAT", "SWEPT", "Evaluations", "checkpoint_of", "eval_arrays", "eval_result",
           "row_result"]
