"""Layer sweeps: units ablated one at a time, all of them or in order until decided.

A sweep is one :func:`pytest_unitablate.core.scan.scan` of a layer (the scan picks its
engine: closed form, prefix/suffix split or naive loop), memoised in memory and in the
store. Under xdist, processes that need the same full sweep cut it into pieces and each
starts with the pieces no other process holds (:meth:`Sweeps.sweep`). Layer-wide checks
that can stop early (``any_unit``) evaluate units in the order of a first-order damage
estimate: the units that can decide first, then the rest in one sweep
(:meth:`Sweeps.in_order`).

Example::

    sweeps = Sweeps(evals)
    full = sweeps.sweep(spec, subject, check)              # every unit of check.layer
    order, how = sweeps.unit_order(spec, subject, check, target=4, damaging_first=True)
    part = sweeps.in_order(spec, subject, check, order, decided=lambda sw: ...)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pytest_unitablate.core.scan import scan
from pytest_unitablate.core.unit_order import estimated_damage
from pytest_unitablate.engine.evaluations import Evaluations
from pytest_unitablate.engine.refs import Subject
from pytest_unitablate.spec.model import Check, Spec


@dataclass(frozen=True)
class Sweep:
    """Units of a layer ablated alone: per-unit predictions on the evaluation data."""

    units: tuple[int, ...]
    predictions: Any  # np.ndarray (n_units, n_examples)
    labels: Any  # np.ndarray (n_examples,)
    baseline: Any = None  # EvalResult of the sweep's own pass (its fingerprint)
    method: str = ""  # the scan engine that ran: closed_form, prefix or naive
    reason: str = ""  # why a faster engine was refused
    plan: str = ""  # the prefix engine's units and examples per pass, and what chose them
    logprobs: Any = None  # np.ndarray (n_units, n_examples): log p(true class), nats
    shares: Any = None  # several resample draws: (n_units, n_examples) share right

    def correct(self, row: int) -> Any:
        """Per-example correctness of row ``row`` (its unit ablated): a bool each, or the
        share of resample draws each example was right in."""
        if self.shares is not None:
            return self.shares[row]
        return self.predictions[row] == self.labels

    def select(self, units: Sequence[int]) -> Sweep:
        """The rows for ``units`` (each unit alone), in that order."""
        rows = [self.units.index(u) for u in units]
        return Sweep(units=tuple(units), predictions=self.predictions[rows],
                     labels=self.labels, baseline=self.baseline, method=self.method,
                     reason=self.reason, plan=self.plan, logprobs=self.logprobs[rows],
                     shares=None if self.shares is None else self.shares[rows])


def merge(parts: Sequence[Sweep]) -> Sweep:
    """Partial sweeps of one layer as one (units in evaluation order)."""
    if len(parts) == 1:
        return parts[0]
    methods = sorted({p.method for p in parts})
    return Sweep(units=tuple(u for p in parts for u in p.units),
                 predictions=np.concatenate([p.predictions for p in parts]),
                 labels=parts[0].labels, baseline=parts[0].baseline,
                 method="+".join(methods), reason=parts[-1].reason, plan=parts[-1].plan,
                 logprobs=np.concatenate([p.logprobs for p in parts]),
                 shares=None if parts[0].shares is None else
                 np.concatenate([p.shares for p in parts]))


class Sweeps:
    """Full and partial layer sweeps and the unit orders of layer-wide checks."""

    def __init__(self, evals: Evaluations) -> None:
        self.evals = evals
        self._sweeps: dict[tuple[Any, ...], Sweep] = {}

    def sweep(self, spec: Spec, subject: Subject, check: Check, ranking: bool = False,
              units: Sequence[int] | None = None,
              lines: Callable[[int, int | None], None] | None = None) -> Sweep:
        """Units of the layer (default: all) ablated alone, one prediction per example each.

        The result names the scan engine that ran and why a faster one was refused.
        Cached in memory and in the store.
        """
        ev = self.evals
        model, data = subject.model, subject.data_for(ranking)
        arg = ev.ablation_memo(spec, subject, check)
        layer_units = ev.units(spec, subject, check)
        channels = layer_units.count
        chosen = tuple(range(channels)) if units is None else tuple(units)
        key = (id(model), id(data), layer_units.memo, arg, chosen)
        if key in self._sweeps:
            return self._sweeps[key]
        baseline = ev.baseline(spec, subject, ranking)
        identity = ev.identity(spec, model, data)

        def piece(units: tuple[int, ...]) -> tuple[dict[str, Any], Callable[[], Any]]:
            def run() -> dict[str, Any]:
                values = ev.ablation_values(spec, subject, check)

                def scan_layer() -> Any:
                    ev.seeded()
                    # a chunk of an early-stopped sweep reports into its series (lines);
                    # a sweep of its own starts one
                    shown = lines if lines is not None else self.progress(
                        spec, check, len(units) * baseline.n)
                    return scan(model, data, check.layer, units=units, **values,
                                device=ev.device, output=spec.output,
                                **layer_units.core_args(),
                                memory_budget=ev.settings.memory_budget,
                                progress=shown if shown is not None else False,
                                prefix_cache=ev.prefixes)

                result = ev.located(spec, scan_layer, check.layer_line, ranking)
                ev.paired(spec, baseline, result.baseline, f"the sweep of {check.layer}",
                          ranking)
                return {"predictions": np.asarray(result.predictions),
                        "logprobs": np.asarray(result.logprobs),
                        **({} if result.shares is None else
                           {"shares": np.asarray(result.shares)}),
                        "method": result.method, "reason": result.reason,
                        "plan": result.plan}

            key = {**identity, "what": "sweep", **layer_units.key(), "units": list(units),
                   **ev.ablation_key(spec, subject, check)}
            return key, run

        pieces = self._pieces(chosen)
        found: dict[int, dict[str, Any]] = {}
        if len(pieces) > 1:  # first the pieces no other worker is computing
            index, workers = ev.settings.worker
            first = index * len(pieces) // workers
            for i in [*range(first, len(pieces)), *range(first)]:
                values = ev.store.try_get_or_compute(*piece(pieces[i]))
                if values is not None:
                    found[i] = values
        for i, units_i in enumerate(pieces):  # then wait for the others' pieces
            if i not in found:
                found[i] = ev.store.get_or_compute(*piece(units_i))
        parts = [found[i] for i in range(len(pieces))]
        methods = sorted({str(v["method"]) for v in parts})
        sweep = Sweep(units=chosen,
                      predictions=np.concatenate([v["predictions"] for v in parts]),
                      labels=baseline.labels, baseline=baseline, method="+".join(methods),
                      reason=str(parts[0]["reason"]), plan=str(parts[0].get("plan", "")),
                      logprobs=np.concatenate([v["logprobs"] for v in parts]),
                      shares=np.concatenate([v["shares"] for v in parts])
                      if "shares" in parts[0] else None)
        self._sweeps[key] = sweep
        return sweep

    def _pieces(self, units: tuple[int, ...]) -> list[tuple[int, ...]]:
        """``units`` cut for sharing between xdist workers: one piece when alone (or with
        nothing stored), else pieces of at least 8 units, about two per worker."""
        workers = self.evals.settings.worker[1]
        if workers <= 1 or not self.evals.store.enabled or len(units) <= 8:
            return [units]
        size = max(8, -(-len(units) // (2 * workers)))
        return [units[i:i + size] for i in range(0, len(units), size)]

    def unit_order(self, spec: Spec, subject: Subject, check: Check, target: int | None,
                   damaging_first: bool) -> tuple[tuple[int, ...], str]:
        """The layer's units, most (or least) damaging first by a first-order estimate on
        the evaluation data, and how the order was made (cached in memory and store).

        A model autograd cannot differentiate gets index order, said in the second value.
        """
        ev = self.evals
        model, data = subject.model, subject.data
        arg = ev.ablation_arg(spec, check)
        # resample's first-order estimate is mean ablation's (its expected replacement)
        arg = "mean" if arg == "resample" else arg
        layer_units = ev.units(spec, subject, check)
        channels = layer_units.count
        key = ("order", id(model), id(data), layer_units.memo,
               ev.ablation_memo(spec, subject, check), target)
        if key not in ev.objects:
            def run() -> dict[str, Any]:
                if layer_units.unit == "head":  # a layer has few heads: index order
                    return {"damage": np.zeros(channels), "how": "head index"}
                means = ev.layer_means(spec, check, subject) if arg == "mean" else None
                try:
                    damage = estimated_damage(
                        model, data, check.layer, target=target, ablation=arg, means=means,
                        channel_dim=layer_units.channel_dim, device=ev.device,
                        output=spec.output, prefix_cache=ev.prefixes)
                    how = "a first-order estimate of each unit's damage"
                except Exception as exc:  # not differentiable: index order, still exact
                    damage = np.zeros(channels)
                    how = f"unit index (no gradient estimate: {type(exc).__name__}: {exc})"
                if len(damage) != channels:
                    damage, how = np.zeros(channels), "unit index"
                return {"damage": np.asarray(damage, dtype=np.float64), "how": how}

            ev.objects[key] = ev.store.get_or_compute(
                {**ev.identity(spec, model, data), "what": "order", **layer_units.key(),
                 **ev.ablation_key(spec, subject, check), "target": target}, run)
        values = ev.objects[key]
        damage = [float(d) for d in values["damage"]]
        sign = -1.0 if damaging_first else 1.0
        order = sorted(range(channels), key=lambda u: (sign * damage[u], u))
        return tuple(order), str(values["how"])

    def progress(self, spec: Spec, check: Check, total: int
                 ) -> Callable[[int, int | None], None] | None:
        """A new progress series for a sweep of ``check`` (``None`` without a factory)."""
        factory = self.evals.settings.progress
        return factory(f"{spec.path}:{check.line} {check.layer}", total) if factory else None

    def in_order(self, spec: Spec, subject: Subject, check: Check, order: Sequence[int],
                 decided: Callable[[Sweep], bool], first: int = 1) -> Sweep:
        """Units ablated alone in ``order``: the first ``first`` of them, then, unless
        ``decided`` says the outcome is fixed, all the others in one sweep.

        The first chunk holds the units most likely to decide (``first`` is what the
        constraint needs: an ``any_unit`` check's ``at_least``). When they do not decide,
        the outcome needs every unit and the rest costs one scan (each scan pays its
        calibration and, without a kept prefix, one prefix pass), not a series of growing
        chunks. Two checks that order a layer alike share both chunks through the caches.

        The result holds only the units evaluated, in ``order``, and does not depend on
        what ran before: a full sweep already made is read chunk by chunk, so the stopping
        point and the deciding unit are the same in a serial run, under xdist and in any
        item order. With the closed-form engine the whole layer is swept at once (one pass).
        """
        ev = self.evals
        layer_units = ev.units(spec, subject, check)
        full = (id(subject.model), id(subject.data), layer_units.memo,
                ev.ablation_memo(spec, subject, check), tuple(range(layer_units.count)))
        parts: list[Sweep] = []
        start, size = 0, first
        n = ev.baseline(spec, subject).n
        # one progress series for every chunk: a share of the whole layer and one estimate
        series = self.progress(spec, check, layer_units.count * n)
        while start < len(order):
            chunk = tuple(order[start:start + size])
            if full in self._sweeps:  # already swept: read the chunk out of it
                part = self._sweeps[full].select(chunk)
            else:
                before = start * n

                def lines(done: int, known: int | None, before: int = before) -> None:
                    assert series is not None  # passed on only with a series
                    series(before + done, None)

                part = self.sweep(spec, subject, check, units=chunk,
                                  lines=lines if series is not None else None)
                if part.method == "closed_form" and start + size < len(order):
                    self.sweep(spec, subject, check)  # the whole layer costs one pass
                    part = self._sweeps[full].select(chunk)
            parts.append(part)
            merged = merge(parts)
            if decided(merged):
                if series is not None:  # decided early: the series ends (its last line)
                    series(layer_units.count * n, None)
                return merged
            start, size = start + size, len(order)
        return merge(parts)


__all__ = ["Sweep", "Sweeps", "merge"]
