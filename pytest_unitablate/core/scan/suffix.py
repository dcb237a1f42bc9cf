"""The prefix engine: per batch the prefix runs once, the suffix on stacked ablated copies.

The suffix runs on ``k`` copies of the batch stacked along dimension 0, copy ``j`` with
unit ``u_j`` ablated, so one suffix forward serves ``k`` units; how many units and
examples go into one pass is measured on the first batch (:mod:`.plan`, :mod:`.memory`).
A :class:`~.prefix.PrefixCache` lets the prefix outputs of an earlier pass stand in for
the prefix.

Example::

    split, why = split_at(model, "layer3")
    out = scan_prefix(model, split, loader, "layer3", (0, 1, 2), "zero", None,
                      torch.device("cpu"), 256, None, 1)   # EngineOutput, or why not
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import fx, nn

from pytest_unitablate.core.data import iter_batches
from pytest_unitablate.core.evaluation import (
    eval_mode,
    select_logits,
    true_logprob,
)
from pytest_unitablate.core.scan.collect import (
    Collector,
    EngineOutput,
    ablated_copies,
    matches_real,
    replacement_values,
)
from pytest_unitablate.core.scan.head_copies import HeadProjection
from pytest_unitablate.core.scan.memory import DEFAULT_MEMORY_BUDGET, graph_peak_bytes
from pytest_unitablate.core.scan.plan import Calibration, Plan, limits, slower_than_naive
from pytest_unitablate.core.scan.prefix import PrefixCache
from pytest_unitablate.core.scan.split import LinearEntry, Split, entry_outputs, linear_entry


def _repeat(value: Any, k: int, batch: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.repeat(k, *([1] * (value.dim() - 1)))
    return value


def _rows(value: Any, rows: slice, batch: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[rows]
    return value


class _Batch:
    """One batch through the prefix: suffix logits for ablated copies of some of its rows."""

    def __init__(self, split: Split, entry: LinearEntry | None, out: Any,
                 extras: Sequence[Any], repl: torch.Tensor, dim: int,
                 output: int | str | None, heads: HeadProjection | None = None,
                 z: torch.Tensor | None = None) -> None:
        self.split, self.entry, self.out, self.extras = split, entry, out, extras
        self.repl, self.dim, self.output = repl, dim, output
        self.heads, self.z = heads, z
        # the entry convolutions of the unablated batch: computed once per batch
        self.full = [conv(out) for conv in entry.convs] if entry is not None else []

    def inputs(self, rows: slice, chunk: Sequence[tuple[int, ...]]
               ) -> tuple[fx.GraphModule, list[Any]]:
        """The graph to run for ablated copies of ``rows`` (copy j: the units of
        ``chunk[j]`` ablated),
        and its arguments."""
        main = self.out if isinstance(self.out, torch.Tensor) else self.out[0]
        batch = main.shape[0]
        part = main[rows]
        repeated = [_repeat(_rows(e, rows, batch), len(chunk), part.shape[0])
                    for e in self.extras]
        if self.heads is not None:  # heads: the projection's change added to its output
            assert self.z is not None
            out = part if isinstance(self.out, torch.Tensor) else \
                type(self.out)(_rows(v, rows, batch) for v in self.out)
            return self.split.suffix, [self.heads.copies(out, self.z[rows], chunk, self.repl),
                                       *repeated]
        if self.entry is not None:
            entry = entry_outputs(self.entry, part, [f[rows] for f in self.full],
                                  [v[0] for v in chunk],
                                  self.repl)
            return self.entry.rest, [*entry, *repeated]
        return self.split.suffix, [ablated_copies(part, chunk, self.repl, self.dim),
                                   *repeated]

    def logits(self, rows: slice, chunk: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """Logits ``(len(chunk) * n_rows, classes)``: copy j has ``chunk[j]`` ablated."""
        graph, args = self.inputs(rows, chunk)
        logits: torch.Tensor = select_logits(graph(*args), self.output)
        return logits

    def row_bytes(self, variant: tuple[int, ...]) -> int:
        """Peak bytes of one suffix pass on one example with ``variant`` ablated."""
        graph, args = self.inputs(slice(0, 1), [variant])
        try:
            return max(1, graph_peak_bytes(graph, *args))
        except Exception:  # the graph does not replay node by node: a conservative guess
            return max(1, 16 * sum(a.nbytes for a in args if isinstance(a, torch.Tensor)))


def scan_prefix(model: nn.Module, split: Split, data: Any, layer: str,
                units: tuple[tuple[int, ...], ...], ablation: str | float,
                means: dict[str, torch.Tensor] | None, device: torch.device,
                batch_size: int, chunk_size: int | None, channel_dim: int,
                output: int | str | None = None, *,
                memory_budget: int = DEFAULT_MEMORY_BUDGET,
                progress: Callable[[int], None] | None = None,
                allow_naive: bool = False,
                cache: PrefixCache | None = None,
                heads: HeadProjection | None = None) -> EngineOutput | str:
    """Predictions ``(len(units), n_examples)`` (each element of ``units`` a tuple of units
    ablated together), or why the engine was refused: the split fails
    verification, or (with ``allow_naive``) it measured slower than the naive loop.

    Units and examples per suffix pass follow :mod:`pytest_unitablate.core.scan.plan`
    (``chunk_size`` fixes the units per pass, still within ``memory_budget``). ``progress``
    is called with the number of (unit, example) pairs each pass finished. With ``cache``
    (:mod:`~pytest_unitablate.core.scan.prefix`) the prefix outputs and unablated logits
    of an earlier pass are reused (raising ``StalePrefix`` if the data no longer matches
    them), and this pass's are kept.

    ``heads`` (:mod:`~pytest_unitablate.core.scan.head_copies`): the units are heads of
    ``layer``, an attention layer the network is split after; the copies add each head's
    change through the output projection (no ``cache``).
    """
    assert heads is None or cache is None, "head scans keep no prefix outputs"
    kept = cache.get(model, data, layer, device, batch_size) if cache is not None else None
    recording = cache.recorder() if cache is not None and kept is None else None
    columns: list[torch.Tensor] = []
    lp_columns: list[torch.Tensor] = []
    collector = Collector(output)
    # the entry convolutions' one-channel shortcut serves one unit per copy
    single = all(len(v) == 1 for v in units)
    entry = linear_entry(split) if channel_dim in (1, -3) and single else None
    plan: Plan | None = None
    calibration: Calibration | None = None
    examples = row_bytes = 0  # per pass, and per (unit, example): measured on the first batch

    def measured(units_per_pass: int) -> Plan:
        return Plan(units_per_pass, examples, row_bytes, memory_budget,
                    "measured on the first batch")

    verified = 0
    first_prefix = first_whole = 0.0
    with eval_mode(model), eval_mode(split.prefix), eval_mode(split.suffix):
        for index, (inputs, labels) in enumerate(
            iter_batches(data, batch_size=batch_size, device=device,
                         digest=collector.digest)
        ):
            began = time.perf_counter()
            stored = kept.batch(index, inputs.shape[0]) if kept is not None else None
            with heads.capturing() if heads is not None else nullcontext():
                produced = split.prefix(inputs) if stored is None else stored
            if heads is None and not isinstance(produced[0], torch.Tensor):
                return (f"the layer's output is a {type(produced[0]).__name__}, not one "
                        f"tensor (the naive loop ablates its first tensor)")
            z = heads.heads_of(produced[0]) if heads is not None else None
            main = produced[0] if z is None else z
            if main.is_cuda:  # kernels run asynchronously: wait before timing
                torch.cuda.synchronize(main.device)
            prefix_time = time.perf_counter() - began
            out, extras = produced[0], produced[1:]
            known = kept.logits[index] if kept is not None and stored is not None else None
            if known is not None:
                collector.add(index, known, labels, picked=True)
            else:
                if cache is not None:  # kept values must survive in-place ops in the suffix
                    base_in = [v.clone() if isinstance(v, torch.Tensor) else v
                               for v in (out, *extras)]
                else:
                    base_in = [out, *extras]
                base = collector.add(index, split.suffix(*base_in), labels)
                if kept is not None and stored is not None:
                    kept.add_logits(index, base)
                elif recording is not None:
                    recording.add(produced, base)
            whole_time = time.perf_counter() - began
            if index == 0 and kept is not None and stored is not None:
                # the prefix ran before; the naive loop's cost is still a whole forward
                if kept.whole_seconds is None:
                    kept.whole_seconds = kept.prefix_seconds + whole_time
                prefix_time, whole_time = 0.0, kept.whole_seconds
            elif index == 0 and recording is not None:
                recording.prefix_seconds, recording.whole_seconds = prefix_time, whole_time
            if index == 0:  # the naive loop is weighed with the first batch's times
                first_prefix, first_whole = prefix_time, whole_time
            dim = channel_dim if channel_dim >= 0 else main.dim() + channel_dim
            if z is not None:
                dim = z.dim() - 1  # heads: replacement values per feature of their output
            repl = replacement_values(ablation, means, layer, main, dim)
            batch = main.shape[0]
            work = _Batch(split, entry if main.dim() == 4 and z is None else None, out,
                          extras, repl, dim, output, heads, z)
            if plan is None and calibration is None:
                row_bytes = work.row_bytes(units[0])
                examples, most = limits(batch, len(units), row_bytes, memory_budget)
                if any(not isinstance(e, torch.Tensor) for e in extras):
                    # a number the prefix computed (the batch size in a reshape, as in
                    # torchvision's ViT) is passed on as it is: copies cannot be stacked
                    # and examples cannot be split, one unit per whole-batch pass
                    if examples < batch:
                        return ("the network after the layer uses numbers computed from the "
                                "batch (a reshape to its size): one batch per pass does not "
                                "fit the memory budget")
                    plan = Plan(1, batch, row_bytes, memory_budget,
                                "the network after the layer uses the batch size")
                elif chunk_size is not None:
                    plan = Plan(max(1, min(chunk_size, most)), examples, row_bytes,
                                memory_budget, f"chunk_size={chunk_size}" +
                                ("" if chunk_size <= most else ", capped by the budget"))
                else:
                    calibration = Calibration(most)
            predictions = torch.empty(len(units), batch, dtype=torch.int64)
            logprobs = torch.empty(len(units), batch, dtype=torch.float32)
            for first in range(0, batch, examples):
                rows = slice(first, min(batch, first + examples))
                size = rows.stop - rows.start
                pos = 0
                while pos < len(units):
                    calibrating = calibration if plan is None else None
                    if calibrating is not None:
                        k = calibrating.next
                    else:
                        assert plan is not None  # set by chunk_size or by the calibration
                        k = plan.units
                    chunk = units[pos:pos + k]
                    began = time.perf_counter()
                    try:
                        logits = work.logits(rows, chunk)
                    except Exception as exc:  # the unablated suffix ran: the split is wrong
                        if verified >= 2:
                            raise
                        return (f"the split network failed on ablated copies of the first "
                                f"batch ({type(exc).__name__}: {exc})")
                    predicted = logits.argmax(dim=1).view(len(chunk), size).cpu()  # syncs
                    took = time.perf_counter() - began
                    if verified < 2:  # the first two passes are checked against real ablations
                        if not _verify(model, inputs[rows], layer, chunk, logits, size,
                                       ablation, means, channel_dim, output,
                                       None if heads is None else heads.site.num_heads):
                            return ("the split network did not match a real ablated forward "
                                    "on the first batch")
                        verified += 1
                    if calibrating is not None and len(chunk) == k:
                        calibrating.record(k, took)
                        if calibrating.done:
                            plan = measured(calibrating.chosen)
                            per_unit = calibrating.per_unit[plan.units] / size
                            if allow_naive and len(units) >= 4 and slower_than_naive(
                                    first_prefix / batch, per_unit, first_whole / batch,
                                    len(units)):
                                return (f"measured on the first batch, the split network "
                                        f"costs {per_unit * 1e3 * batch:.2f} ms per unit "
                                        f"against {first_whole * 1e3:.2f} ms for a whole "
                                        f"forward (the naive loop), with "
                                        f"{plan.describe()}")
                    predictions[pos:pos + len(chunk), rows] = predicted
                    logprobs[pos:pos + len(chunk), rows] = true_logprob(
                        logits, labels[rows]).view(len(chunk), size).cpu()
                    pos += len(chunk)
                    if progress is not None:
                        progress(len(chunk) * size)
            columns.append(predictions)
            lp_columns.append(logprobs)
    if plan is None and calibration is not None:  # too little work to finish measuring
        plan = measured(calibration.chosen)
    result = collector.finish(columns, lp_columns)
    if kept is not None:
        kept.check_pass(result.fingerprint, len(columns))
    if cache is not None and recording is not None:
        cache.put(model, data, layer, device, batch_size, recording, result.fingerprint)
    result.plan = plan.describe() if plan is not None else ""
    return result


def _verify(model: nn.Module, inputs: torch.Tensor, layer: str,
            chunk: Sequence[tuple[int, ...]],
            logits: torch.Tensor, batch: int, ablation: str | float,
            means: dict[str, torch.Tensor] | None, channel_dim: int,
            output: int | str | None = None, num_heads: int | None = None) -> bool:
    """The logits of the first and last copies of ``chunk`` against real ablated forwards
    (``num_heads``: the units are heads)."""
    return all(matches_real(model, inputs, layer, chunk[j], logits[j * batch:(j + 1) * batch],
                            ablation, means, channel_dim=channel_dim, output=output,
                            unit="channel" if num_heads is None else "head",
                            num_heads=num_heads)
               for j in sorted({0, len(chunk) - 1}))


__all__ = ["scan_prefix"]
