"""Scan a layer: every unit ablated alone, per-example predictions for each.

Engines, chosen automatically (``method="auto"``) and reported in ``ScanResult.method``:

* ``closed_form``: when everything after the layer is a chain of per-channel operations
  (elementwise activations such as ReLU or GELU, eval-mode batch norm, dropout, average or
  max pooling), flatten and one ``nn.Linear``, an ablated channel is a constant map that
  the chain turns into known features ``g_u``, and the logits change by exactly
  ``-W[:, u] @ (f_u - g_u)`` (``f_u``: the channel's features in front of the Linear).
  One forward per batch serves every unit. The engine is verified against real ablated
  forwards on the first batch and refused if they disagree.
* ``prefix``: the network is split with ``torch.fx`` at the layer. The prefix (everything
  the layer's output and the rest of the network need from before it, residual branches
  included) runs once per batch; the suffix runs on ``chunk_size`` ablated copies of the
  layer's output stacked along the batch dimension, one unit ablated per copy. Exact
  because eval-mode networks treat examples independently; verified against real ablated
  forwards on the first batch.
* ``naive``: one forward of the whole network per unit and batch, with the ablation hook.

Example::

    result = scan(model, loader, "layer4")
    result.frame          # tidy DataFrame: unit, target, n, baseline, ablated, drop,
                          # and the same in log-probability of the true class (nats)
    result.predictions    # (n_units, n_examples) predicted classes
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pytest_unitablate.core.ablation import ablate, channel_means
from pytest_unitablate.core.data import count_examples, iter_batches, require_replayable
from pytest_unitablate.core.evaluation import (
    EvalResult,
    check_paired,
    evaluate,
    model_device,
)
from pytest_unitablate.core.heads import check_heads, head_means, head_site
from pytest_unitablate.core.layers import (
    batch_dim,
    check_units,
    probe_layers,
    shape_text,
)
from pytest_unitablate.core.layout import unit_dim_of
from pytest_unitablate.core.scan.closed_form import closed_form_head, scan_closed_form
from pytest_unitablate.core.scan.collect import EngineOutput
from pytest_unitablate.core.scan.head_copies import head_projection
from pytest_unitablate.core.scan.heads import scan_heads, split_for_heads
from pytest_unitablate.core.scan.memory import DEFAULT_MEMORY_BUDGET
from pytest_unitablate.core.scan.prefix import PrefixCache, StalePrefix
from pytest_unitablate.core.scan.progress import Progress
from pytest_unitablate.core.scan.replay import scan_replay
from pytest_unitablate.core.scan.result import ScanResult, variants_of
from pytest_unitablate.core.scan.split import remembered, split_at
from pytest_unitablate.core.scan.suffix import scan_prefix
from pytest_unitablate.core.tokens import TokenBatch
from pytest_unitablate.errors import ConfigError

if TYPE_CHECKING:
    pass



def scan(
    model: nn.Module,
    data: Any,
    layer: str,
    units: Sequence[int | Sequence[int]] | None = None,
    ablation: str | float = "zero",
    *,
    means: dict[str, torch.Tensor] | None = None,
    channel_dim: int | None = None,
    device: torch.device | str | None = None,
    method: str = "auto",
    batch_size: int = 256,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    progress: bool | Callable[[int, int | None], None] | None = None,
    output: int | str | None = None,
    prefix_cache: PrefixCache | None = None,
    unit: str = "channel",
    num_heads: int | None = None,
    resample: Sequence[Any] | None = None,
) -> ScanResult:
    """Ablate each unit of ``layer`` alone and record every example's prediction.

    ``units`` defaults to all channels. An element may also be a tuple of units: that row
    ablates them together (``units=[3, (4, 7)]``: unit 3 alone, then 4 and 7 together).
    ``ablation`` is ``"zero"``, ``"mean"`` or a number.
    ``method`` is ``"auto"``, ``"closed_form"``, ``"prefix"``, ``"replay"`` or ``"naive"``
    (a named engine that cannot run is a ``ConfigError`` saying why; ``"auto"`` picks the
    fastest that can, and ``ScanResult.reason`` says why a faster one was refused).

    The prefix engine stacks several ablated copies of a batch into one suffix forward.
    By default it measures, on the first batch, how many units per pass are fastest and
    how many fit in ``memory_budget`` bytes (default
    :data:`~pytest_unitablate.core.scan.memory.DEFAULT_MEMORY_BUDGET`, 2 GiB, beyond what a
    plain forward of one batch needs), and with ``method="auto"`` falls back to the naive
    loop if the split network is measured slower than it; ``ScanResult.plan`` says what it
    chose. ``chunk_size`` fixes the units per pass instead (still within the budget).

    ``progress``: ``True`` shows a tqdm bar, ``False`` none; by default a bar appears on
    a terminal once the scan has run for 2 s. A callable is called as ``progress(done,
    total)`` with (unit, example) pairs finished and the total (``None`` when the data's
    length is unknown). ``output`` picks the logits out of a tuple, list or dict model
    output, as for ``evaluate()``. ``prefix_cache``
    (:class:`~pytest_unitablate.core.scan.prefix.PrefixCache`) lets scans of one layer
    share the network before it: the prefix engine reuses the outputs an earlier pass left
    there and leaves its own (results are the same with or without it).

    ``unit="head"`` scans attention heads of ``layer`` (an ``nn.MultiheadAttention``, an
    output projection or a TransformerLens ``hook_z``: :mod:`pytest_unitablate.core.heads`;
    ``num_heads`` where the module does not say): ``units`` are head indices and ``means``
    per-feature means of the heads' concatenated output. The prefix engine runs them from
    the output projection on (:mod:`~pytest_unitablate.core.scan.head_copies`); a model
    ``torch.fx`` cannot split takes the replay engine
    (:mod:`~pytest_unitablate.core.scan.replay`), as do its channels.

    ``ablation="resample"`` takes ``resample``, one
    :class:`~pytest_unitablate.core.resample.ResampleSource` per draw: each row is the
    mean over the draws (log-probabilities, and ``shares`` of right answers when there
    are several); the naive loop runs it (each example takes other examples' values).
    """
    if method not in ("auto", "closed_form", "prefix", "replay", "naive"):
        raise ConfigError(
            f"scan method must be auto, closed_form, prefix, replay or naive, got {method!r}")
    require_replayable(data)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    if budget < 1:
        raise ConfigError(f"scan memory_budget must be a positive number of bytes, got {budget}")
    target = torch.device(device) if device is not None else model_device(model)
    first = next(iter(iter_batches(data, batch_size=batch_size, device=target)))[0]
    if unit == "head":  # before probing: a head site says what to name when it is wrong
        head_site(model, layer, num_heads)
    info = probe_layers(model, first[:2], [layer], channel_dim=channel_dim or 1)[layer]
    batch = batch_dim(model, first[:3], layer) if unit == "channel" else None
    if unit == "channel":
        channel_dim = unit_dim_of(model, layer, info.shape, channel_dim, batch or 0)
        at = channel_dim if channel_dim >= 0 else len(info.shape) + channel_dim
        info = replace(info, channels=info.shape[at])
    else:
        channel_dim = 1 if channel_dim is None else channel_dim
    count = info.channels
    if unit == "head":
        count = head_site(model, layer, num_heads).num_heads
    elif unit != "channel":
        raise ConfigError(f"scan unit must be 'channel' or 'head', got {unit!r}")
    chosen, variants = (tuple(range(count)), tuple((u,) for u in range(count))) \
        if units is None else variants_of(layer, units)
    flat = [u for v in variants for u in v]
    if unit == "head":
        check_heads(head_site(model, layer, num_heads), flat)
    else:
        check_units(layer, flat, count, info.shape, channel_dim, batch or 0)
    if ablation == "mean" and (means is None or layer not in means):
        means = {layer: head_means(model, data, layer, num_heads=num_heads, device=target)} \
            if unit == "head" else channel_means(model, data, [layer],
                                                  channel_dim=channel_dim, device=target)
    if ablation == "resample":
        if not resample:
            raise ConfigError(f"scan of {layer!r}: resample ablation needs resample= (one "
                              f"ResampleSource per draw)")
        if method in ("closed_form", "prefix", "replay"):
            raise ConfigError(f"scan(method={method!r}) refused for {layer!r}: resample "
                              f"ablation runs the naive loop")
    if unit == "head" and method == "closed_form":
        raise ConfigError(f"scan(method='closed_form') refused for {layer!r}: heads have no "
                          f"closed form (the network after the attention is not affine in "
                          f"it); use method='auto', 'prefix', 'replay' or 'naive'")
    if unit == "head" and method in ("prefix", "replay") and \
            head_projection(model, layer, num_heads) is None:
        raise ConfigError(f"scan(method={method!r}) refused for {layer!r}: its heads cannot be "
                          f"ablated after its output (only batch-first nn.MultiheadAttention, "
                          f"a Linear or Conv1D output projection and a TransformerLens "
                          f"hook_z can); use method='auto' or 'naive'")

    if not chosen:  # nothing to ablate: the baseline alone
        base = evaluate(model, data, device=target, batch_size=batch_size, output=output)
        return ScanResult(layer, chosen, np.zeros((0, base.n), dtype=np.int64), base.labels,
                          base, "naive", "no units to scan",
                          logprobs=np.zeros((0, base.n), dtype=np.float32))
    tick = Progress(progress, len(chosen), count_examples(data), f"scan {layer}")
    try:  # the bar goes away even when a batch raises
        def result(out: Any, method_name: str, why: str = "") -> ScanResult:
            base = EvalResult(labels=out.labels, predictions=out.baseline,
                              num_classes=out.num_classes, fingerprint=out.fingerprint,
                              logprob=out.baseline_logprob)
            return ScanResult(layer, chosen, out.predictions, out.labels, base, method_name, why,
                              out.plan, out.logprobs)

        def replayed(why: str, heads: Any = None) -> ScanResult | str:
            """The replay engine (:mod:`.replay`) where the split could not be made (or
            asked for: then a refusal is a ConfigError)."""
            if method not in ("auto", "replay") or ablation == "resample" or \
                    batch not in (0, None):
                return why
            tick.restart()
            found = scan_replay(model, data, layer, variants, ablation, means, target,
                                batch_size, output, channel_dim=channel_dim or 1,
                                heads=heads, progress=tick, allow_naive=method == "auto")
            if isinstance(found, str):
                if method == "replay":
                    raise ConfigError(f"scan(method='replay') refused for {layer!r}: {found}")
                return f"{why}; replay: {found}"
            if found.plan:  # measured no cheaper than plain forwards: the naive loop's
                return result(found, "naive", f"{why}; replay: {found.plan}")
            found.plan = (f"the modules that finish before {layer!r} replayed, the rest "
                          f"once per {'head' if unit == 'head' else 'unit'}")
            return result(found, "replay", why)

        head = None
        reason = ""
        if isinstance(first, TokenBatch):
            if method in ("closed_form", "prefix"):
                raise ConfigError(f"scan(method={method!r}) refused for {layer!r}: "
                                  f"tokenizer-style batches run the naive loop")
            reason = "tokenizer-style batches (a dict per batch) are not split"
            if unit == "channel":
                done = replayed(reason)
                if not isinstance(done, str):
                    return done
                reason = done
            method = "naive" if unit == "channel" or method not in ("auto", "replay") \
                else "replay-only"
        if ablation == "resample":
            reason = "resample: each example takes other examples' values (the naive loop)"
            method = "naive"
        if unit == "head" and method != "naive":
            projection = head_projection(model, layer, num_heads) \
                if method in ("auto", "replay-only", "prefix", "replay") else None
            if projection is not None:  # from the output projection on
                split, why = (None, reason) if method in ("replay-only", "replay") else \
                    remembered(model, layer, split_at) if prefix_cache is None else \
                    prefix_cache.split(model, layer)
                if method == "replay-only":
                    method = "auto"
                if split is None and method == "prefix":
                    raise ConfigError(f"scan(method='prefix') refused for {layer!r}: {why}")
                if split is not None:
                    tick.restart()
                    after = scan_prefix(model, split, data, layer, variants, ablation, means,
                                        target, batch_size, chunk_size, -1, output,
                                        memory_budget=budget, progress=tick,
                                        allow_naive=method == "auto" and chunk_size is None,
                                        heads=projection)
                    if not isinstance(after, str):
                        after.plan = (f"heads from the output projection on (the network "
                                      f"before it once per batch): {after.plan}")
                        return result(after, "prefix")
                    if method == "prefix":
                        raise ConfigError(f"scan(method='prefix') refused for {layer!r}: "
                                          f"{after}")
                    why = after
                else:
                    done = replayed(why, projection)
                    if not isinstance(done, str):
                        return done
                    why = done
                reason = f"heads: {why}"
            elif method == "auto":
                split, why = remembered(model, layer, split_for_heads) \
                    if prefix_cache is None else prefix_cache.split(model, layer,
                                                                    split_for_heads)
                if split is not None:
                    tick.restart()
                    by_heads = scan_heads(model, split, data, layer, variants, ablation, means,
                                       target, batch_size, output, num_heads, tick)
                    if not isinstance(by_heads, str):
                        by_heads.plan = ("1 head per suffix pass (heads are ablated inside "
                                      "the attention), the network before it once per "
                                      "batch")
                        return result(by_heads, "prefix")
                    why = by_heads
                reason = f"heads: {why}"
            method = "naive"
        if batch not in (0, None):
            if method in ("closed_form", "prefix", "replay"):
                raise ConfigError(f"scan(method={method!r}) refused for {layer!r}: its output "
                                  f"{shape_text(info.shape, None, batch)} is not batch-first")
            reason = (f"the layer's output {shape_text(info.shape, None, batch)} has its batch "
                      f"on dimension {batch}: the naive loop")
            method = "naive"
        if method == "replay":  # asked for: no split tried, a refusal is an error
            done = replayed("method='replay'")
            assert not isinstance(done, str)
            return done
        if method in ("auto", "closed_form"):
            if channel_dim != 1 or len(info.shape) != 4:
                reason = "closed form needs a 4-D N,C,H,W layer with channel_dim 1"
            else:
                head = remembered(model, layer, closed_form_head)
                if head is None:
                    reason = ("the network after the layer is not per-channel operations "
                              "(activations, pooling) -> flatten -> Linear")
            if head is None and method == "closed_form":
                raise ConfigError(f"scan(method='closed_form') refused for {layer!r}: {reason}")
        if head is not None:
            preds = scan_closed_form(model, data, layer, variants, ablation, means, head, target,
                                      batch_size, output, tick)
            if preds is not None:
                return result(preds, "closed_form")
            reason = "closed form did not match a real ablated forward on the first batch"
            if method == "closed_form":
                raise ConfigError(f"scan(method='closed_form') refused for {layer!r}: {reason}")
        if method in ("auto", "prefix"):
            split, why = remembered(model, layer, split_at) if prefix_cache is None else \
                prefix_cache.split(model, layer)
            if split is not None:
                found: EngineOutput | str | None = None
                for cache in (prefix_cache, None):  # None: the data changed since it was kept
                    tick.restart()
                    try:
                        found = scan_prefix(model, split, data, layer, variants, ablation, means,
                                            target, batch_size, chunk_size, channel_dim,
                                            output, memory_budget=budget, progress=tick,
                                            allow_naive=method == "auto" and chunk_size is None,
                                            cache=cache)
                        break
                    except StalePrefix:
                        assert prefix_cache is not None
                        prefix_cache.drop(model, data, layer, target, batch_size)
                assert found is not None
                if not isinstance(found, str):
                    return result(found, "prefix", reason)
                why = found
            elif unit == "channel":  # torch.fx cannot split it: replay what runs before
                done = replayed(why)
                if not isinstance(done, str):
                    return done
                why = done
            reason = f"{reason}; {why}" if reason else why
            if method == "prefix":
                raise ConfigError(f"scan(method='prefix') refused for {layer!r}: {why}")
        tick.restart()
        baseline = evaluate(model, data, device=target, batch_size=batch_size, output=output)
        rows = []
        lp_rows = []
        share_rows = []
        for variant in variants:
            runs = []
            for source in (resample if ablation == "resample" and resample else [None]):
                if source is not None:
                    source.offset = 0
                with ablate(model, {layer: list(variant)}, ablation=ablation, means=means,
                            channel_dim=channel_dim, unit=unit, num_heads=num_heads,
                            resample={layer: source} if source is not None else None):
                    ablated = evaluate(model, data, device=target, batch_size=batch_size,
                                       output=output)
                    check_paired(baseline, ablated,
                                 f"the pass with {layer} units {list(variant)} ablated")
                runs.append(ablated)
            rows.append(runs[0].predictions)
            lp_rows.append(np.mean([r.true_logprob for r in runs], axis=0, dtype=np.float64)
                           .astype(np.float32))
            share_rows.append(np.mean([r.correct for r in runs], axis=0, dtype=np.float64))
            tick(baseline.n)
        n = baseline.n
        preds_naive = np.stack(rows) if rows else np.zeros((0, n), dtype=np.int64)
        lp_naive = np.stack(lp_rows) if lp_rows else np.zeros((0, n), dtype=np.float32)
        draws = len(resample) if ablation == "resample" and resample else 1
        shares = (np.stack(share_rows) if share_rows else np.zeros((0, n), dtype=np.float64)
                  ) if draws > 1 else None
        return ScanResult(layer, chosen, preds_naive, baseline.labels, baseline, "naive", reason,
                          logprobs=lp_naive, shares=shares)
    finally:
        tick.close()
