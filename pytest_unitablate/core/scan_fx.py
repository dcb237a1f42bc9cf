"""Split a network at a layer with ``torch.fx`` and scan units through the suffix only.

The prefix graph computes the layer's output and every other value the rest of the
network uses from before the layer (a residual ``identity`` that skips over it, the input
itself, ...). The suffix graph takes those as inputs. Per batch the prefix runs once; the
suffix runs on ``k`` copies of the batch stacked along dimension 0, copy ``j`` with unit
``u_j`` ablated, so one suffix forward serves ``k`` units.

Example::

    split, why = split_at(model, "layer3")
    if split is not None:
        layer_out, *rest = split.prefix(x)
        logits = split.suffix(layer_out, *rest)   # == model(x)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import fx, nn

from pytest_unitablate.core.ablation import ablate, check_means
from pytest_unitablate.core.data import PassDigest, iter_batches
from pytest_unitablate.core.evaluation import (
    checked_logits,
    eval_mode,
    logits_agree,
    select_logits,
)
from pytest_unitablate.core.memory import DEFAULT_MEMORY_BUDGET, graph_peak_bytes
from pytest_unitablate.core.scan_plan import Calibration, Plan, limits, slower_than_naive

if TYPE_CHECKING:
    from pytest_unitablate.core.prefix_cache import PrefixCache


@dataclass
class EngineOutput:
    """What a fast engine's single pass yields: per-unit and baseline predictions."""

    predictions: npt.NDArray[np.int64]  # (n_units, n_examples)
    baseline: npt.NDArray[np.int64]  # (n_examples,) unablated predictions
    labels: npt.NDArray[np.int64]
    num_classes: int
    fingerprint: str = ""
    plan: str = ""  # the prefix engine's units and examples per suffix pass, and why


class Collector:
    """Accumulates baseline predictions and labels, with evaluate()'s checks on logits."""

    def __init__(self, output: int | str | None = None) -> None:
        self.output = output
        self.base: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.width: int | None = None
        self.digest = PassDigest()

    def add(self, index: int, produced: Any, labels: torch.Tensor, picked: bool = False
            ) -> torch.Tensor:
        """Check and keep a batch's baseline; returns the logits picked from ``produced``
        (``picked``: ``produced`` is those logits already)."""
        logits = checked_logits(index, produced, labels, self.width,
                                None if picked else self.output)
        self.width = int(logits.shape[1])
        self.base.append(logits.argmax(dim=1).cpu())
        self.labels.append(labels.cpu())
        return logits

    def finish(self, columns: list[torch.Tensor]) -> EngineOutput:
        assert self.width is not None
        return EngineOutput(
            predictions=torch.cat(columns, dim=1).numpy().astype(np.int64),
            baseline=torch.cat(self.base).numpy().astype(np.int64),
            labels=torch.cat(self.labels).numpy().astype(np.int64),
            num_classes=self.width,
            fingerprint=self.digest.hexdigest(),
        )


@dataclass
class Split:
    """The two halves of a traced network; ``suffix(layer_out, *extras)`` gives logits."""

    prefix: fx.GraphModule
    suffix: fx.GraphModule
    n_extras: int


def trace_keeping(model: nn.Module, layer: str) -> fx.GraphModule:
    """``torch.fx`` trace of ``model`` in which ``layer`` stays one call (a leaf), even when
    it is a container such as a ``Sequential`` or a residual block."""

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return qualname == layer or super().is_leaf_module(m, qualname)

    graph = _Tracer().trace(model)
    return fx.GraphModule(model, graph)


def split_at(model: nn.Module, layer: str) -> tuple[Split | None, str]:
    """Split ``model`` at ``layer``; ``(None, why)`` when it cannot be done exactly."""
    try:
        traced = trace_keeping(model, layer)
    except Exception as exc:
        return None, f"torch.fx cannot trace the model ({type(exc).__name__}: {exc})"
    graph = traced.graph
    hits = [n for n in graph.nodes if n.op == "call_module" and n.target == layer]
    if len(hits) != 1:
        return None, (f"torch.fx sees {len(hits)} calls of {layer!r} (a layer inside a traced "
                      f"leaf module, or a shared module)")
    cut = hits[0]
    after: set[fx.Node] = {cut}
    for node in graph.nodes:
        if any(inp in after for inp in node.all_input_nodes):
            after.add(node)
    output = next(n for n in graph.nodes if n.op == "output")
    if output not in after:
        return None, f"the model's output does not depend on {layer!r}"
    extras: list[fx.Node] = []
    for node in graph.nodes:
        if node in after and node is not cut:
            for inp in node.all_input_nodes:
                if inp not in after and inp not in extras and inp.op != "get_attr":
                    extras.append(inp)

    # Prefix: everything before the cut, returning (layer output, *extras).
    prefix_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node in after and node is not cut:
            continue
        if node.op == "output":
            continue
        env[node] = prefix_graph.node_copy(node, lambda n: env[n])
        if node is cut:
            break
    for node in graph.nodes:  # values defined after the cut's position but not after it
        if node not in env and node not in after and node.op != "output":
            env[node] = prefix_graph.node_copy(node, lambda n: env[n])
    prefix_graph.output((env[cut], *(env[e] for e in extras)))

    # Suffix: the layer output and the extras come in as placeholders.
    suffix_graph = fx.Graph()
    senv: dict[fx.Node, fx.Node] = {cut: suffix_graph.placeholder("layer_out")}
    for i, extra in enumerate(extras):
        senv[extra] = suffix_graph.placeholder(f"extra_{i}")
    for node in graph.nodes:
        if node in after and node is not cut:
            if node.op == "output":
                suffix_graph.output(fx.map_arg(node.args[0], lambda n: senv[n]))
            else:
                senv[node] = suffix_graph.node_copy(node, lambda n: senv[n])
        elif node.op == "get_attr" and node not in senv:
            senv[node] = suffix_graph.node_copy(node, lambda n: senv[n])
    prefix, suffix = fx.GraphModule(traced, prefix_graph), fx.GraphModule(traced, suffix_graph)
    for half in (prefix, suffix):
        half.graph.eliminate_dead_code()
        half.recompile()
    return Split(prefix, suffix, len(extras)), ""


@dataclass
class LinearEntry:
    """The suffix starts with convolutions only: ``rest(*conv_outputs, *extras)``.

    Ablating unit u changes each entry convolution's output by exactly
    ``conv_without_bias((x_u - r_u) e_u)``, a convolution of one channel, so the entry
    convolutions run once per batch and each unit costs 1/C of them.
    """

    convs: list[nn.Conv2d]
    rest: fx.GraphModule


def linear_entry(split: Split) -> LinearEntry | None:
    """Split off the suffix's entry convolutions, or ``None`` if something else reads the
    layer's output (an add, a ReLU, a grouped or non-zero-padded convolution, ...)."""
    graph = split.suffix.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    layer_in = placeholders[0]
    modules = dict(split.suffix.named_modules())
    convs: list[tuple[fx.Node, nn.Conv2d]] = []
    for user in layer_in.users:
        mod = modules.get(str(user.target)) if user.op == "call_module" else None
        if not (isinstance(mod, nn.Conv2d) and mod.groups == 1
                and mod.padding_mode == "zeros" and isinstance(mod.padding, tuple)
                and len(user.args) == 1 and not user.kwargs):
            return None
        convs.append((user, mod))
    if not convs:
        return None
    rest_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for i, (node, _) in enumerate(convs):
        env[node] = rest_graph.placeholder(f"entry_{i}")
    for extra in placeholders[1:]:
        env[extra] = rest_graph.placeholder(str(extra.target))
    consumers = {node for node, _ in convs}
    for node in graph.nodes:
        if node.op == "placeholder" or node in consumers:
            continue
        if node.op == "output":
            rest_graph.output(fx.map_arg(node.args[0], lambda n: env[n]))
        else:
            env[node] = rest_graph.node_copy(node, lambda n: env[n])
    rest = fx.GraphModule(split.suffix, rest_graph)
    rest.graph.eliminate_dead_code()
    rest.recompile()
    return LinearEntry([m for _, m in convs], rest)


def entry_outputs(entry: LinearEntry, out: torch.Tensor, full: Sequence[torch.Tensor],
                  units: Sequence[int], repl: torch.Tensor) -> list[torch.Tensor]:
    """Each entry convolution's output for ``len(units)`` ablated copies (stacked on dim 0);
    ``full`` holds the convolutions of the unablated ``out``, computed once per batch."""
    k, batch = len(units), out.shape[0]
    idx = torch.as_tensor(list(units), device=out.device)
    shifted = out[:, idx] - repl[idx].view(1, k, 1, 1)  # (B, k, H, W): x_u - r_u per unit
    results = []
    for conv, whole in zip(entry.convs, full, strict=True):
        weight = conv.weight[:, idx].transpose(0, 1).reshape(k * conv.out_channels, 1,
                                                             *conv.weight.shape[2:])
        delta = torch.nn.functional.conv2d(shifted, weight, None, conv.stride, conv.padding,
                                           conv.dilation, groups=k)
        delta = delta.view(batch, k, conv.out_channels, *delta.shape[2:]).transpose(0, 1)
        results.append((whole.unsqueeze(0) - delta).reshape(k * batch, *whole.shape[1:]))
    return results


def _repeat(value: Any, k: int, batch: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.repeat(k, *([1] * (value.dim() - 1)))
    return value


def replacement_values(ablation: str | float, means: dict[str, torch.Tensor] | None, layer: str,
                       like: torch.Tensor, dim: int) -> torch.Tensor:
    """The per-channel replacement r (zero, the channel means, or a constant)."""
    channels = like.shape[dim]
    if ablation == "zero":
        return torch.zeros(channels, dtype=like.dtype, device=like.device)
    if ablation == "mean":
        assert means is not None
        check_means(layer, means[layer], channels)
        return means[layer].to(dtype=like.dtype, device=like.device)
    return torch.full((channels,), float(ablation), dtype=like.dtype, device=like.device)


def ablated_copies(out: torch.Tensor, units: Sequence[int], repl: torch.Tensor,
                   dim: int) -> torch.Tensor:
    """``len(units)`` copies of ``out`` stacked on dim 0, copy ``j`` with ``units[j]`` ablated."""
    k, batch = len(units), out.shape[0]
    channels = out.shape[dim]
    keep = torch.ones(k, channels, dtype=out.dtype, device=out.device)
    keep[torch.arange(k), torch.as_tensor(list(units))] = 0
    shape = [k] + [1] * out.dim()
    shape[dim + 1] = channels
    keep_v = keep.view(shape)
    add_v = (repl[None, :] * (1 - keep)).view(shape)
    stacked = out.unsqueeze(0) * keep_v + add_v
    return stacked.reshape(k * batch, *out.shape[1:])


def _rows(value: Any, rows: slice, batch: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value[rows]
    return value


class _Batch:
    """One batch through the prefix: suffix logits for ablated copies of some of its rows."""

    def __init__(self, split: Split, entry: LinearEntry | None, out: torch.Tensor,
                 extras: Sequence[Any], repl: torch.Tensor, dim: int,
                 output: int | str | None) -> None:
        self.split, self.entry, self.out, self.extras = split, entry, out, extras
        self.repl, self.dim, self.output = repl, dim, output
        # the entry convolutions of the unablated batch: computed once per batch
        self.full = [conv(out) for conv in entry.convs] if entry is not None else []

    def inputs(self, rows: slice, chunk: Sequence[int]) -> tuple[fx.GraphModule, list[Any]]:
        """The graph to run for ablated copies of ``rows`` (copy j: ``chunk[j]`` ablated),
        and its arguments."""
        batch = self.out.shape[0]
        part = self.out[rows]
        repeated = [_repeat(_rows(e, rows, batch), len(chunk), part.shape[0])
                    for e in self.extras]
        if self.entry is not None:
            entry = entry_outputs(self.entry, part, [f[rows] for f in self.full], chunk,
                                  self.repl)
            return self.entry.rest, [*entry, *repeated]
        return self.split.suffix, [ablated_copies(part, chunk, self.repl, self.dim),
                                   *repeated]

    def logits(self, rows: slice, chunk: Sequence[int]) -> torch.Tensor:
        """Logits ``(len(chunk) * n_rows, classes)``: copy j has ``chunk[j]`` ablated."""
        graph, args = self.inputs(rows, chunk)
        logits: torch.Tensor = select_logits(graph(*args), self.output)
        return logits

    def row_bytes(self, unit: int) -> int:
        """Peak bytes of one suffix pass on one example with ``unit`` ablated."""
        graph, args = self.inputs(slice(0, 1), [unit])
        try:
            return max(1, graph_peak_bytes(graph, *args))
        except Exception:  # the graph does not replay node by node: a conservative guess
            return max(1, 16 * sum(a.nbytes for a in args if isinstance(a, torch.Tensor)))


def scan_prefix(model: nn.Module, split: Split, data: Any, layer: str,
                units: tuple[int, ...], ablation: str | float,
                means: dict[str, torch.Tensor] | None, device: torch.device,
                batch_size: int, chunk_size: int | None, channel_dim: int,
                output: int | str | None = None, *,
                memory_budget: int = DEFAULT_MEMORY_BUDGET,
                progress: Callable[[int], None] | None = None,
                allow_naive: bool = False,
                cache: PrefixCache | None = None) -> EngineOutput | str:
    """Predictions ``(n_units, n_examples)``, or why the engine was refused: the split fails
    verification, or (with ``allow_naive``) it measured slower than the naive loop.

    Units and examples per suffix pass follow :mod:`pytest_unitablate.core.scan_plan`
    (``chunk_size`` fixes the units per pass, still within ``memory_budget``). ``progress``
    is called with the number of (unit, example) pairs each pass finished. With ``cache``
    (:mod:`~pytest_unitablate.core.prefix_cache`) the prefix outputs and unablated logits
    of an earlier pass are reused (raising ``StalePrefix`` if the data no longer matches
    them), and this pass's are kept.
    """
    kept = cache.get(model, data, layer, device, batch_size) if cache is not None else None
    recording = cache.recorder() if cache is not None and kept is None else None
    columns: list[torch.Tensor] = []
    collector = Collector(output)
    entry = linear_entry(split) if channel_dim in (1, -3) else None
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
            produced = split.prefix(inputs) if stored is None else stored
            if not isinstance(produced[0], torch.Tensor):
                return (f"the layer's output is a {type(produced[0]).__name__}, not one "
                        f"tensor (the naive loop ablates its first tensor)")
            if produced[0].is_cuda:  # kernels run asynchronously: wait before timing
                torch.cuda.synchronize(produced[0].device)
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
            dim = channel_dim if channel_dim >= 0 else out.dim() + channel_dim
            repl = replacement_values(ablation, means, layer, out, dim)
            batch = out.shape[0]
            work = _Batch(split, entry if out.dim() == 4 else None, out, extras, repl, dim,
                          output)
            if plan is None and calibration is None:
                row_bytes = work.row_bytes(units[0])
                examples, most = limits(batch, len(units), row_bytes, memory_budget)
                if chunk_size is not None:
                    plan = Plan(max(1, min(chunk_size, most)), examples, row_bytes,
                                memory_budget, f"chunk_size={chunk_size}" +
                                ("" if chunk_size <= most else ", capped by the budget"))
                else:
                    calibration = Calibration(most)
            predictions = torch.empty(len(units), batch, dtype=torch.int64)
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
                    logits = work.logits(rows, chunk)
                    predicted = logits.argmax(dim=1).view(len(chunk), size).cpu()  # syncs
                    took = time.perf_counter() - began
                    if verified < 2:  # the first two passes are checked against real ablations
                        if not _verify(model, inputs[rows], layer, chunk, logits, size,
                                       ablation, means, channel_dim, output):
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
                    pos += len(chunk)
                    if progress is not None:
                        progress(len(chunk) * size)
            columns.append(predictions)
    if plan is None and calibration is not None:  # too little work to finish measuring
        plan = measured(calibration.chosen)
    result = collector.finish(columns)
    if kept is not None:
        kept.check_pass(result.fingerprint, len(columns))
    if cache is not None and recording is not None:
        cache.put(model, data, layer, device, batch_size, recording, result.fingerprint)
    result.plan = plan.describe() if plan is not None else ""
    return result


def _verify(model: nn.Module, inputs: torch.Tensor, layer: str, chunk: Sequence[int],
            logits: torch.Tensor, batch: int, ablation: str | float,
            means: dict[str, torch.Tensor] | None, channel_dim: int,
            output: int | str | None = None) -> bool:
    few = min(batch, 16)  # a slice of the first batch is enough to catch a wrong split
    for j in sorted({0, len(chunk) - 1}):
        with ablate(model, {layer: [chunk[j]]}, ablation=ablation, means=means,
                    channel_dim=channel_dim):
            real = select_logits(model(inputs[:few]), output)
        if not logits_agree(logits[j * batch:j * batch + few], real):
            return False
    return True
