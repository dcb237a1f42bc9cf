"""Scans over attention heads through a split: the network before the attention runs once
per batch, the rest once per head.

A head is ablated inside the attention computation, so the prefix engine's trick (stacked
ablated copies of a layer's output) does not apply. What still applies is the split: the
network is cut at the module whose output feeds the attention layer (a block's
``LayerNorm``, say), the prefix up to there runs once per batch, and for each head the
suffix (the attention with that head ablated, and everything after it) runs on a copy of
the kept values. One head per suffix pass: the cost per head is the suffix's share of a
whole forward. Verified against real ablated forwards on the first batch, as every
engine is; the naive loop runs where no such cut exists.

Example::

    out = scan_heads(model, split, loader, "blocks.2.attn", ((0,), (1,)), "zero", None,
                     torch.device("cpu"), 256)   # EngineOutput, or why not
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from pytest_unitablate.core.data import iter_batches
from pytest_unitablate.core.evaluation import (
    eval_mode,
    select_logits,
    true_logprob,
)
from pytest_unitablate.core.heads import ablation_edit, editing_heads, head_site
from pytest_unitablate.core.scan.collect import Collector, EngineOutput, matches_real
from pytest_unitablate.core.scan.plan import slower_than_naive
from pytest_unitablate.core.scan.split import Split, split_at, trace_keeping


def cut_before(model: nn.Module, layer: str) -> tuple[str | None, str]:
    """The module whose output is the attention ``layer``'s first input, positional or
    by keyword (where to cut the network so the suffix holds the attention), or
    ``(None, why)``."""
    try:
        traced = trace_keeping(model, layer)
    except Exception as exc:
        return None, f"torch.fx cannot trace the model ({type(exc).__name__}: {exc})"
    calls = [n for n in traced.graph.nodes if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        return None, f"torch.fx sees {len(calls)} calls of {layer!r}"
    call = calls[0]
    source: Any = call.args[0] if call.args else next(iter(call.kwargs.values()), None)
    if getattr(source, "op", None) != "call_module":
        return None, (f"the input of {layer!r} is not a module's output (nothing before the "
                      f"attention to run once)")
    return str(source.target), ""


def scan_heads(model: nn.Module, split: Split, data: Any, layer: str,
               variants: tuple[tuple[int, ...], ...], ablation: str | float,
               means: dict[str, torch.Tensor] | None, device: torch.device,
               batch_size: int, output: int | str | None = None,
               num_heads: int | None = None,
               progress: Callable[[int], None] | None = None,
               measure: bool = True) -> EngineOutput | str:
    """Predictions ``(len(variants), n_examples)``, each row with its heads of ``layer``
    ablated, or why the split was refused: it disagreed with a real ablated forward, or
    (``measure``) a head's suffix pass measured no cheaper than the naive loop's forward
    on the first batch."""
    site = head_site(model, layer, num_heads)
    mean = means.get(layer) if means is not None else None
    edits = [ablation_edit(site, v, ablation, mean) for v in variants]
    collector = Collector(output)
    columns: list[torch.Tensor] = []
    lp_columns: list[torch.Tensor] = []
    with eval_mode(model), eval_mode(split.prefix), eval_mode(split.suffix):
        for index, (inputs, labels) in enumerate(
                iter_batches(data, batch_size=batch_size, device=device,
                             digest=collector.digest)):
            began = time.perf_counter()
            produced = split.prefix(inputs)
            prefix_time = time.perf_counter() - began
            collector.add(index, split.suffix(*_copies(produced)), labels)
            whole_time = time.perf_counter() - began  # what one naive forward costs
            predictions = torch.empty(len(variants), inputs.shape[0], dtype=torch.int64)
            logprobs = torch.empty(len(variants), inputs.shape[0], dtype=torch.float32)
            for row, (variant, edit) in enumerate(zip(variants, edits, strict=True)):
                began = time.perf_counter()
                with editing_heads(site, edit):
                    logits = select_logits(split.suffix(*_copies(produced)), output)
                # the split must save a tenth of the naive loop's forwards, or it is not
                # worth its copies and checks (the first block's heads: it saves nothing)
                if index == 0 and row == 0 and measure and slower_than_naive(
                        prefix_time, time.perf_counter() - began, 0.9 * whole_time,
                        len(variants)):
                    return (f"measured on the first batch, a head's suffix pass costs "
                            f"{(time.perf_counter() - began) * 1e3:.2f} ms against "
                            f"{whole_time * 1e3:.2f} ms for a whole forward (the naive loop)")
                if index == 0 and row in (0, len(variants) - 1) and not matches_real(
                        model, inputs, layer, variant, logits, ablation, means, unit="head",
                        num_heads=num_heads, output=output):
                    return "the split network did not match a real ablated forward"
                predictions[row] = logits.argmax(dim=1).cpu()
                logprobs[row] = true_logprob(logits, labels).cpu()
                if progress is not None:
                    progress(int(labels.shape[0]))
            columns.append(predictions)
            lp_columns.append(logprobs)
    return collector.finish(columns, lp_columns)


def _copies(values: Sequence[Any]) -> list[Any]:
    """The kept prefix values, copied: in-place ops in the suffix must not change them."""
    return [v.clone() if isinstance(v, torch.Tensor) else v for v in values]


def split_for_heads(model: nn.Module, layer: str) -> tuple[Split | None, str]:
    """The split whose suffix starts with the attention ``layer`` (``(None, why)``), when
    the network before it holds enough of the work to be worth running once: at least a
    fifth of the parameters the two halves use (for a transformer, whose blocks see the
    same tokens, parameters are where the work is). The first block's attention has
    almost nothing before it, and its heads go to the naive loop."""
    before, why = cut_before(model, layer)
    if before is None:
        return None, why
    split, why = split_at(model, before)
    if split is None:
        return None, why
    prefix, suffix = _parameters(split.prefix), _parameters(split.suffix)
    if prefix < 0.2 * (prefix + suffix):
        return None, (f"the network before {layer!r} holds {prefix} of the {prefix + suffix} "
                      f"parameters the forward uses: running it once would save little")
    return split, ""


def _parameters(graph: Any) -> int:
    """Parameters and buffers the modules and attributes a graph calls hold."""
    seen: set[int] = set()
    total = 0
    modules = dict(graph.named_modules())
    for node in graph.graph.nodes:
        tensors: list[torch.Tensor] = []
        if node.op == "call_module":
            module = modules[str(node.target)]
            tensors = [*module.parameters(), *module.buffers()]
        elif node.op == "get_attr":
            value = graph
            for part in str(node.target).split("."):
                value = getattr(value, part)
            tensors = [value] if isinstance(value, torch.Tensor) else []
        for tensor in tensors:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel()
    return total


__all__ = ["cut_before", "scan_heads", "split_for_heads"]
