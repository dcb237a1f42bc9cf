"""The closed-form engine: exact single-unit ablations with one forward per batch.

When everything after the layer is a chain of per-channel operations (elementwise
activations such as ReLU or GELU, eval-mode batch norm, dropout, average or max pooling),
then flatten and one ``nn.Linear``, a channel the ablation sets to a constant ``r_c``
stays a constant map through the chain: its features in front of the Linear are the
chain applied to that constant, ``g_c`` (ReLU and GELU map 0 to 0; a mean maps to its
activation). The logits then change by exactly ``-W[:, c] @ (f_c - g_c)``, where ``f_c``
are the channel's features on the example, so one forward per batch serves every unit.
Verified against real ablated forwards on the first batch.

Example::

    head = closed_form_head(model, "conv5")     # conv5 -> ReLU -> GAP -> fc, or None
    out = scan_closed_form(model, loader, "conv5", ((0,), (1,)), "zero", None, head,
                           torch.device("cpu"), 256)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from pytest_unitablate.core.data import iter_batches
from pytest_unitablate.core.evaluation import eval_mode, true_logprob
from pytest_unitablate.core.layers import require_single_call, resolve_layer
from pytest_unitablate.core.scan.collect import (
    CHECKED_EXAMPLES,
    Collector,
    matches_real,
    replacement_values,
)
from pytest_unitablate.core.scan.split import trace_keeping
from pytest_unitablate.core.tokens import call_model

#: Modules that act on each channel alone (elementwise, or pooling within a channel).
PER_CHANNEL_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.CELU,
    nn.SELU, nn.Tanh, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
    nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity, nn.AdaptiveAvgPool2d,
    nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten,
)
# (not F.dropout: torch.fx records its ``training`` flag as it was when traced)
_PER_CHANNEL_FUNCTIONS = (
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.mish, F.elu, F.leaky_relu, F.hardswish,
    torch.sigmoid, torch.tanh, F.sigmoid, F.tanh, F.adaptive_avg_pool2d,
    F.avg_pool2d, F.max_pool2d, F.adaptive_max_pool2d, torch.flatten, torch.mean,
)
_PER_CHANNEL_METHODS = ("relu", "sigmoid", "tanh", "flatten", "view", "reshape", "mean",
                        "contiguous")


@dataclass
class ClosedFormHead:
    """The final ``linear`` and the per-channel ``chain`` from the layer's output to its
    input (``chain(out)`` gives the Linear's input features, channel-major)."""

    linear: nn.Linear
    chain: fx.GraphModule


def _per_channel(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        mod = modules.get(str(node.target))
        if isinstance(mod, nn.PReLU) and mod.num_parameters != 1:
            return False  # per-channel slopes are fine too, but rare: keep the rule simple
        return isinstance(mod, PER_CHANNEL_MODULES)
    if node.op == "call_function":
        return any(node.target is f for f in _PER_CHANNEL_FUNCTIONS)
    return node.op == "call_method" and node.target in _PER_CHANNEL_METHODS


def closed_form_head(model: nn.Module, layer: str) -> ClosedFormHead | None:
    """The closed form's parts when everything after ``layer`` is a single chain of
    per-channel operations, flatten and one ``nn.Linear`` whose output is the model's
    output; ``None`` otherwise (or when torch.fx cannot trace the model).

    The chain's form is what makes the result exact; the engine still checks it against
    real ablated forwards on the first batch.
    """
    try:
        traced = trace_keeping(model, layer)
    except Exception:
        return None
    graph = traced.graph
    modules = dict(traced.named_modules())
    nodes = list(graph.nodes)
    start = next((n for n in nodes if n.op == "call_module" and n.target == layer), None)
    if start is None:
        return None
    chain: list[fx.Node] = []
    current = start
    while True:
        users = list(current.users)
        if len(users) != 1:
            return None  # the layer's value must flow through one chain
        node = users[0]
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), nn.Linear):
            linear = modules[str(node.target)]
            assert isinstance(linear, nn.Linear)
            if node.all_input_nodes != [current] or len(node.users) != 1:
                return None
            out = next(iter(node.users))
            if out.op != "output" or out.args[0] is not node:
                return None
            break
        if not _per_channel(node, modules) or node.all_input_nodes != [current]:
            return None
        chain.append(node)
        current = node
    piece = fx.Graph()
    env: dict[fx.Node, fx.Node] = {start: piece.placeholder("layer_out")}
    for node in chain:
        env[node] = piece.node_copy(node, lambda n: env[n])
    piece.output(env[current])
    gm = fx.GraphModule(traced, piece)
    return ClosedFormHead(linear, gm)


def _shifted(logits: torch.Tensor, diff: torch.Tensor, weight: torch.Tensor,
             variant: Sequence[int]) -> torch.Tensor:
    """Logits with the channels of ``variant`` ablated: ``logits - sum_c W_c @ (f_c - g_c)``
    (``diff``: ``f - g`` per example, channel and pooled position, ``(N, C, S)``;
    ``weight``: ``(classes, C, S)``)."""
    idx = torch.as_tensor(list(variant), device=diff.device)
    return logits - diff[:, idx].flatten(1) @ weight[:, idx].flatten(1).T


#: Elements of the ``(units, batch, classes)`` logit block the engine makes at once.
_BLOCK = 1 << 24


def _closed_form_batch(logits: torch.Tensor, diff: torch.Tensor, weight: torch.Tensor,
                       variants: Sequence[Sequence[int]], labels: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and log p(true) ``(n_variants, batch)`` from the exact logit shifts."""
    batch, width = logits.shape
    preds, lps = [], []
    step = max(1, _BLOCK // max(1, batch * width))
    for at in range(0, len(variants), step):
        part = variants[at:at + step]
        if all(len(v) == 1 for v in part):  # one unit per row: the rows in one product
            idx = torch.as_tensor([v[0] for v in part], device=diff.device)
            # shifted[u, n, k] = logits[n, k] - sum_s diff[n, u, s] * W[k, u, s]
            shifted = logits[None] - torch.einsum("nus,kus->unk", diff[:, idx],
                                                  weight[:, idx])
        else:
            shifted = torch.stack([_shifted(logits, diff, weight, v) for v in part])
        k = shifted.shape[0]
        preds.append(shifted.argmax(dim=2))
        lps.append(true_logprob(shifted.reshape(k * batch, width), labels).view(k, batch))
    return torch.cat(preds), torch.cat(lps)


def scan_closed_form(model: nn.Module, data: Any, layer: str,
                     variants: tuple[tuple[int, ...], ...],
                     ablation: str | float, means: dict[str, torch.Tensor] | None,
                     head: ClosedFormHead, device: torch.device, batch_size: int,
                     output: int | str | None = None,
                     progress: Callable[[int], None] | None = None) -> Any:
    """Predictions of every row of ``variants`` (each a tuple of units ablated together),
    or ``None`` when the closed form does not match a real ablated forward."""
    module = resolve_layer(model, layer)
    shapes: list[torch.Size] = []
    features: list[torch.Tensor] = []

    def hook(m: nn.Module, a: Any, out: torch.Tensor) -> None:
        shapes.append(out.shape)

    def pre(m: nn.Module, a: Any) -> None:
        features.append(a[0])

    weight = head.linear.weight.detach()
    collector = Collector(output)
    out: list[torch.Tensor] = []
    out_lp: list[torch.Tensor] = []
    constant: dict[tuple[Any, ...], torch.Tensor] = {}
    verified = False
    handles = [module.register_forward_hook(hook),
               head.linear.register_forward_pre_hook(pre)]
    try:
        with eval_mode(model):
            for index, (inputs, labels) in enumerate(
                iter_batches(data, batch_size=batch_size, device=device,
                             digest=collector.digest)
            ):
                shapes.clear()
                features.clear()
                logits = collector.add(index, call_model(model, inputs), labels)
                require_single_call(model, layer, len(shapes))
                shape = shapes[0]
                channels = shape[1]
                feats = features[0].to(logits.dtype)
                if feats.dim() != 2 or feats.shape[1] % channels:
                    return None  # the Linear's input is not per-channel features
                positions = feats.shape[1] // channels
                key = (tuple(shape[1:]), feats.dtype)
                if key not in constant:
                    repl = replacement_values(ablation, means, layer,
                                              feats.new_zeros(1, channels), 1)
                    filled = repl.view(1, channels, *([1] * (len(shape) - 2))).expand(
                        1, *shape[1:]).contiguous()
                    constant[key] = head.chain(filled).to(feats.dtype).reshape(
                        channels, positions)
                diff = feats.reshape(-1, channels, positions) - constant[key][None]
                w3 = weight.to(feats.dtype).view(weight.shape[0], channels, positions)
                preds, lps = _closed_form_batch(logits, diff, w3, variants, labels)
                if not verified:
                    for handle in handles:
                        handle.remove()
                    handles = []
                    if not _verify(model, layer, inputs, logits, diff, w3, variants,
                                   ablation, means, output):
                        return None
                    verified = True
                    handles = [module.register_forward_hook(hook),
                               head.linear.register_forward_pre_hook(pre)]
                out.append(preds.cpu())
                out_lp.append(lps.cpu())
                if progress is not None:
                    progress(len(variants) * int(labels.shape[0]))
    finally:
        for handle in handles:
            handle.remove()
    return collector.finish(out, out_lp)


def _verify(model: nn.Module, layer: str, inputs: torch.Tensor, logits: torch.Tensor,
            diff: torch.Tensor, weight: torch.Tensor,
            variants: tuple[tuple[int, ...], ...], ablation: str | float,
            means: dict[str, torch.Tensor] | None, output: int | str | None = None) -> bool:
    """Compare the closed-form logits with real ablated forwards for the first and the
    last row."""
    few = min(inputs.shape[0], CHECKED_EXAMPLES)
    return all(matches_real(model, inputs, layer, variant,
                            _shifted(logits[:few], diff[:few], weight, variant), ablation,
                            means, output=output)
               for variant in dict.fromkeys((variants[0], variants[-1])))


__all__ = ["PER_CHANNEL_MODULES", "ClosedFormHead", "closed_form_head", "scan_closed_form"]
