"""The closed-form engine: exact single-unit ablations with one forward per batch.

When everything after the layer is global average pooling, flatten, (eval) dropout and one
``nn.Linear``, the network's suffix is affine in the layer's output, and ablating unit u
changes the logits by exactly ``-W[:, u] * (pooled_u - r_u)``. Verified against real
ablated forwards on the first batch.

Example::

    head = affine_head(model, "layer4")        # the final Linear, or None
    out = scan_closed_form(model, loader, "layer4", (0, 1), "zero", None, head,
                           torch.device("cpu"), 256)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from pytest_unitablate.core.ablation import ablate
from pytest_unitablate.core.data import iter_batches
from pytest_unitablate.core.evaluation import eval_mode, logits_agree, true_logprob
from pytest_unitablate.core.layers import require_single_call, resolve_layer
from pytest_unitablate.core.scan.collect import Collector, replacement_values
from pytest_unitablate.core.scan.split import trace_keeping
from pytest_unitablate.core.tokens import call_model


def affine_head(model: nn.Module, layer: str) -> nn.Linear | None:
    """The final Linear if everything after ``layer`` is GAP -> flatten -> dropout -> Linear.

    Detected with torch.fx; ``None`` when the model cannot be traced or the suffix is not
    of that form.
    """

    try:
        graph = trace_keeping(model, layer).graph
    except Exception:
        return None
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    start = next((i for i, n in enumerate(nodes)
                  if n.op == "call_module" and n.target == layer), None)
    if start is None:
        return None
    current = nodes[start]
    linear: nn.Linear | None = None
    pooled = False
    for node in nodes[start + 1:]:
        if node.op == "output":
            args = node.args[0]
            return linear if (args is current and linear is not None and pooled) else None
        if current not in node.all_input_nodes:
            if any(current is a for a in node.all_input_nodes):
                return None
            continue
        if len(node.users) == 0:
            return None
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(mod, nn.AdaptiveAvgPool2d) and mod.output_size in (1, (1, 1)):
            pooled = True
        elif isinstance(mod, (nn.Flatten, nn.Dropout, nn.Identity)) or (
            node.op == "call_function" and node.target is torch.flatten
        ) or (node.op == "call_method" and node.target in ("flatten", "view", "reshape")):
            pass
        elif node.op == "call_function" and node.target is torch.mean and pooled is False:
            pooled = True
        elif isinstance(mod, nn.Linear) and linear is None and pooled:
            linear = mod
        else:
            return None
        # the layer's value must flow through a single chain
        if sum(1 for n in nodes if current in n.all_input_nodes) != 1:
            return None
        current = node
    return None


def _shifted(logits: torch.Tensor, diff: torch.Tensor, weight: torch.Tensor,
             variant: Sequence[int]) -> torch.Tensor:
    """Logits with the units of ``variant`` ablated: ``logits - sum_u (p_u - r_u) W[:, u]``
    (``diff`` holds ``p - r`` per example and channel)."""
    idx = torch.as_tensor(list(variant), device=diff.device)
    return logits - diff[:, idx] @ weight[:, idx].T


def _closed_form_batch(logits: torch.Tensor, pooled: torch.Tensor, weight: torch.Tensor,
                       repl: torch.Tensor, variants: Sequence[Sequence[int]], labels: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and log p(true) ``(n_variants, batch)`` from the exact logit shifts."""
    if all(len(v) == 1 for v in variants):  # one unit per row: all rows in one product
        idx = torch.as_tensor([v[0] for v in variants], device=pooled.device)
        # delta[u, n, :] = -W[:, u] * (pooled[n, u] - r_u)
        diff = pooled[:, idx] - repl[idx][None, :]  # (batch, U)
        shifted = logits[None, :, :] - diff.T[:, :, None] * weight[:, idx].T[:, None, :]
    else:
        diff = pooled - repl[None, :]
        shifted = torch.stack([_shifted(logits, diff, weight, v) for v in variants])
    k, batch, width = shifted.shape
    lp = true_logprob(shifted.reshape(k * batch, width), labels).view(k, batch)
    return shifted.argmax(dim=2), lp


def scan_closed_form(model: nn.Module, data: Any, layer: str,
                     variants: tuple[tuple[int, ...], ...],
                     ablation: str | float, means: dict[str, torch.Tensor] | None,
                     head: nn.Linear, device: torch.device, batch_size: int,
                     output: int | str | None = None,
                     progress: Callable[[int], None] | None = None) -> Any:
    """Predictions of every row of ``variants`` (each a tuple of units ablated together),
    or ``None`` when the closed form does not match a real ablated forward."""
    module = resolve_layer(model, layer)
    captured: list[torch.Tensor] = []
    calls = [0]

    def hook(m: nn.Module, a: Any, out: torch.Tensor) -> None:
        calls[0] += 1
        captured.append(out.mean(dim=(2, 3)))

    weight = head.weight.detach()
    collector = Collector(output)
    out: list[torch.Tensor] = []
    out_lp: list[torch.Tensor] = []
    verified = False
    handle = module.register_forward_hook(hook)
    try:
        with eval_mode(model):
            for index, (inputs, labels) in enumerate(
                iter_batches(data, batch_size=batch_size, device=device,
                             digest=collector.digest)
            ):
                captured.clear()
                calls[0] = 0
                logits = collector.add(index, call_model(model, inputs), labels)
                require_single_call(model, layer, calls[0])
                pooled = captured[0].to(logits.dtype)
                repl = replacement_values(ablation, means, layer, pooled, 1)
                preds, lps = _closed_form_batch(logits, pooled, weight, repl, variants,
                                                labels)
                if not verified:
                    handle.remove()
                    if not _verify(model, layer, inputs, logits, pooled, weight, repl,
                                   variants, ablation, means):
                        return None
                    verified = True
                    handle = module.register_forward_hook(hook)
                out.append(preds.cpu())
                out_lp.append(lps.cpu())
                if progress is not None:
                    progress(len(variants) * int(labels.shape[0]))
    finally:
        handle.remove()
    return collector.finish(out, out_lp)


def _verify(model: nn.Module, layer: str, inputs: torch.Tensor, logits: torch.Tensor,
            pooled: torch.Tensor, weight: torch.Tensor, repl: torch.Tensor,
            variants: tuple[tuple[int, ...], ...], ablation: str | float,
            means: dict[str, torch.Tensor] | None) -> bool:
    """Compare the closed-form logits with real ablated forwards for the first and the
    last row."""
    few = min(inputs.shape[0], 16)  # a slice of the first batch is enough to catch a mismatch
    diff = pooled[:few] - repl[None, :]
    for variant in dict.fromkeys((variants[0], variants[-1])):
        predicted = _shifted(logits[:few], diff, weight, variant)
        with ablate(model, {layer: list(variant)}, ablation=ablation, means=means):
            real = call_model(model, inputs[:few])
        if not logits_agree(predicted, real):
            return False
    return True


__all__ = ["affine_head", "scan_closed_form"]
