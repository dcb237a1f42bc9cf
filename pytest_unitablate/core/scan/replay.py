"""The replay engine: the prefix engine's saving for models ``torch.fx`` cannot split.

Hugging Face and TransformerLens models branch on their inputs in Python, so ``torch.fx``
cannot trace them and the prefix engine cannot cut them at a layer. Their modules still
run in an order: every module that finishes before the layer starts (the embeddings,
the earlier blocks, in the layer's own block the norm and the query, key and value
projections) computes the same values whatever the layer's units do. One probe forward
on two examples records that order; then, per batch,

* one normal pass keeps those modules' outputs and the layer's output (and, for heads,
  the heads' output ``z`` in front of the projection): the baseline;
* each ablated pass runs the model again on the batch with those modules *replayed*
  (their ``forward`` returns the kept output instead of computing it) and the layer's
  output replaced by the ablated one (a head's change added through the projection, as
  in :mod:`.head_copies`; a channel set to its replacement).

Only what lies between the replayed modules and the layer (an attention's softmax, say)
and what follows the layer runs again. A module called more than once per forward, or
whose output is not tensors with the batch first, is not replayed. The first two passes
are checked against real ablated forwards; the engine is refused if they differ, or if
the first batch measures a pass no cheaper than a plain forward.

Example::

    out = scan_replay(model, loader, "m.layers.1.attention.o_proj", ((0,), (1,)), "zero",
                      None, torch.device("cpu"), 64, heads=head_projection(model, layer))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from pytest_unitablate.core.ablation import ablate
from pytest_unitablate.core.data import iter_batches
from pytest_unitablate.core.evaluation import (
    eval_mode,
    select_logits,
    true_logprob,
)
from pytest_unitablate.core.layers import resolve_layer
from pytest_unitablate.core.scan.collect import (
    Collector,
    EngineOutput,
    ablated_copies,
    matches_real,
    replacement_values,
)
from pytest_unitablate.core.scan.head_copies import HeadProjection
from pytest_unitablate.core.tokens import TokenBatch, call_model


def _batch_first(value: Any, batch: int) -> bool:
    """Tensors (or a tuple or list of them, ``None`` allowed) whose batch is dimension 0,
    or that hold no batch at all (broadcast alike to every example)."""
    if value is None:
        return True
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 or value.shape[0] == batch or batch == 1
    if isinstance(value, (tuple, list)):
        return all(_batch_first(v, batch) for v in value)
    return False


def replayable(model: nn.Module, inputs: Any, layer: str) -> tuple[list[nn.Module], str]:
    """The modules whose outputs can be replayed when ``layer`` is ablated: called once per
    forward, finished before ``layer`` starts, not inside another such module, with
    batch-first tensor outputs (one probe forward on ``inputs``); or ``([], why)``."""
    target = resolve_layer(model, layer)
    events: list[tuple[str, int]] = []
    calls: dict[int, int] = {}
    outputs: dict[int, Any] = {}
    names: dict[int, str] = {}
    handles = []
    for name, module in model.named_modules():
        if module is model or id(module) in names:
            continue
        names[id(module)] = name

        def pre(m: nn.Module, a: Any, key: int = id(module)) -> None:
            calls[key] = calls.get(key, 0) + 1
            events.append(("start", key))

        def post(m: nn.Module, a: Any, out: Any, key: int = id(module)) -> None:
            events.append(("end", key))
            outputs[key] = out

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        with eval_mode(model):
            call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    start = next((i for i, (what, key) in enumerate(events)
                  if what == "start" and key == id(target)), None)
    if start is None or calls.get(id(target)) != 1:
        return [], f"{layer!r} is called {calls.get(id(target), 0)} times per forward"
    batch = _batch_size(inputs)
    ended = {key for what, key in events[:start] if what == "end"}
    chosen = [key for key in names if key in ended and calls.get(key) == 1
              and _batch_first(outputs.get(key), batch)]
    chosen_names = {names[key] for key in chosen}
    by_id = {id(m): m for m in model.modules()}
    kept = [by_id[key] for key in chosen
            if not any(names[key].startswith(parent + ".") for parent in chosen_names)]
    if not kept:
        return [], f"nothing before {layer!r} can be replayed (no module finishes before it)"
    return kept, ""


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, TokenBatch):
        return int(next(iter(inputs.values())).shape[0])
    return int(inputs.shape[0])


@contextmanager
def _replaying(modules: Sequence[nn.Module], kept: dict[int, Any]) -> Iterator[None]:
    """Each module's ``forward`` returns its kept output (copied: the model may change it
    in place) instead of computing it."""
    own = {id(m): m.__dict__["forward"] for m in modules if "forward" in m.__dict__}
    for module in modules:
        value = kept[id(module)]

        def forward(*args: Any, value: Any = value, **kwargs: Any) -> Any:
            return _copied(value)

        module.forward = forward
    try:
        yield
    finally:
        for module in modules:  # a forward the instance had of its own is put back
            if id(module) in own:
                module.forward = own[id(module)]
            else:
                del module.forward


def _copied(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copied(v) for v in value)
    return value


@contextmanager
def _hooked(modules: Sequence[nn.Module], target: nn.Module, kept: dict[int, Any],
            replace: Callable[[Any], Any] | None) -> Iterator[None]:
    """Keep the outputs of ``modules`` and ``target`` (``replace``: the target's output is
    replaced by what it returns)."""
    handles = []
    for module in modules:
        def keep(m: nn.Module, a: Any, out: Any, key: int = id(module)) -> None:
            kept[key] = _copied(out)  # as returned: the model may change it in place later
        handles.append(module.register_forward_hook(keep))

    def at_target(m: nn.Module, a: Any, out: Any) -> Any:
        if replace is not None:
            return replace(out)
        kept[id(target)] = _copied(out)
        return None

    handles.append(target.register_forward_hook(at_target))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def scan_replay(model: nn.Module, data: Any, layer: str,
                variants: tuple[tuple[int, ...], ...], ablation: str | float,
                means: dict[str, torch.Tensor] | None, device: torch.device,
                batch_size: int, output: int | str | None = None, *,
                channel_dim: int = 1, heads: HeadProjection | None = None,
                progress: Callable[[int], None] | None = None,
                allow_naive: bool = True) -> EngineOutput | str:
    """Predictions ``(len(variants), n_examples)``, each row with its units (channels on
    ``channel_dim``, or ``heads``) of ``layer`` ablated, or why the engine was refused.

    With ``allow_naive`` (and more than two rows), the first batch alternates replayed
    rows and plain ablated forwards (rows 1 and 3); when the fastest replayed row is no
    faster than the fastest plain one, the rows from there on are plain ablated forwards
    (the naive loop's; nothing computed is thrown away): ``plan`` of the result then says
    why."""
    target = resolve_layer(model, layer)
    collector = Collector(output)
    columns: list[torch.Tensor] = []
    lp_columns: list[torch.Tensor] = []
    modules: list[nn.Module] = []
    plain = ""  # why the rows went back to plain ablated forwards, once measured
    verified = 0
    replayed_times: list[float] = []
    plain_times: list[float] = []
    with eval_mode(model):
        for index, (inputs, labels) in enumerate(
                iter_batches(data, batch_size=batch_size, device=device,
                             digest=collector.digest)):
            if index == 0:
                modules, why = replayable(model, inputs[:2], layer)
                if not modules:
                    return why
            kept: dict[int, Any] = {}
            with _hooked([] if plain else modules, target, kept, None), \
                    heads.capturing() if heads is not None else nullcontext():
                produced = call_model(model, inputs)
            out = kept[id(target)]
            main = out if isinstance(out, torch.Tensor) else out[0]
            if not isinstance(main, torch.Tensor) or main.shape[0] != labels.shape[0]:
                return "the layer's output is not one batch-first tensor"
            z = heads.heads_of(out) if heads is not None else None
            logits = collector.add(index, produced, labels)
            del produced
            dim = (z.dim() - 1) if z is not None else (
                channel_dim if channel_dim >= 0 else main.dim() + channel_dim)
            repl = replacement_values(ablation, means, layer, main if z is None else z, dim)
            predictions = torch.empty(len(variants), labels.shape[0], dtype=torch.int64)
            logprobs = torch.empty(len(variants), labels.shape[0], dtype=torch.float32)
            for row, variant in enumerate(variants):
                # on the first batch, rows 1 and 3 are plain ablated forwards: the yardstick
                # the replayed rows 0 and 2 must beat, or the rest go plain
                yardstick = index == 0 and row in (1, 3) and allow_naive and \
                    len(variants) > row + 1
                began = time.perf_counter()
                if plain or yardstick:  # what the naive loop does: nothing wasted
                    kind = {"unit": "head", "num_heads": heads.site.num_heads} \
                        if heads is not None else {"channel_dim": channel_dim}
                    with ablate(model, {layer: list(variant)}, ablation=ablation,
                                means=means, **kind):
                        ablated = select_logits(call_model(model, inputs), output)
                else:
                    changed = heads.copies(out, z, [variant], repl) if z is not None and \
                        heads is not None else ablated_copies(main, [variant], repl, dim)

                    def swap(_: Any, changed: Any = changed) -> Any:
                        return changed

                    with _replaying(modules, kept), _hooked([], target, {}, swap):
                        ablated = select_logits(call_model(model, inputs), output)
                took = time.perf_counter() - began  # the row alone, not its check below
                if not (plain or yardstick) and verified < 2:
                    # the first two replayed rows against real ablated forwards
                    if not matches_real(model, inputs, layer, variant, ablated, ablation,
                                        means, unit="channel" if heads is None else "head",
                                        channel_dim=channel_dim, output=output,
                                        num_heads=None if heads is None else
                                        heads.site.num_heads):
                        return "the replayed pass did not match a real ablated forward"
                    verified += 1
                if index == 0 and row < 4:
                    (plain_times if yardstick else replayed_times).append(took)
                if yardstick and not cheaper(min(replayed_times), min(plain_times)):
                    plain = (f"measured on the first batch, a replayed pass costs "
                             f"{min(replayed_times) * 1e3:.2f} ms against "
                             f"{min(plain_times) * 1e3:.2f} ms for a plain ablated forward: "
                             f"plain forwards from there on")
                predictions[row] = ablated.argmax(dim=1).cpu()
                logprobs[row] = true_logprob(ablated, labels).cpu()
                if progress is not None:
                    progress(int(labels.shape[0]))
            del logits
            columns.append(predictions)
            lp_columns.append(logprobs)
    found = collector.finish(columns, lp_columns)
    found.plan = plain
    return found


def cheaper(replayed: float, plain: float) -> bool:
    """Whether a replayed pass (seconds) costs less than a plain ablated forward."""
    return replayed < plain


__all__ = ["cheaper", "replayable", "scan_replay"]
