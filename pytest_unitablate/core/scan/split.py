"""A network split at a layer with ``torch.fx``: the prefix up to the layer, the suffix after.

The prefix graph computes the layer's output and every other value the rest of the
network uses from before the layer (a residual ``identity`` that skips over it, the input
itself, ...). The suffix graph takes those as inputs, so ``suffix(*prefix(x)) == model(x)``.
Where the suffix starts with plain convolutions of the layer's output, :func:`linear_entry`
splits those off: ablating a unit then changes their outputs by a one-channel convolution.

Example::

    split, why = split_at(model, "layer3")
    if split is not None:
        layer_out, *rest = split.prefix(x)
        logits = split.suffix(layer_out, *rest)   # == model(x)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import fx, nn


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
        why = ("a module that reads its submodules' weights without calling them, as "
               "nn.TransformerEncoderLayer and nn.MultiheadAttention do on their fused "
               "paths, or a layer inside a module fx keeps whole" if not hits
               else "a module called more than once per forward")
        return None, f"torch.fx sees {len(hits)} calls of {layer!r} ({why})"
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
    for node in graph.nodes:  # (the output node is after the cut: checked above)
        if node in after and node is not cut:
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


T = TypeVar("T")

_SPLITS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, str], Any]] = \
    weakref.WeakKeyDictionary()


def _structure(model: nn.Module) -> tuple[Any, ...]:
    """What a split depends on besides the code: which module and tensor sits where."""
    return (tuple((name, id(m)) for name, m in model.named_modules()),
            tuple(id(t) for t in model.parameters()), tuple(id(t) for t in model.buffers()))


def remembered(model: nn.Module, layer: str, how: Callable[[nn.Module, str], T]) -> T:
    """``how(model, layer)`` (a split of the network, or the closed form's parts: what
    tracing finds), computed once per model, layer and ``how`` while the model's modules
    and tensors stay the same objects: a later ``scan()`` of the layer does not trace it
    again.

    >>> calls = []
    >>> def how(model, layer):
    ...     calls.append(layer)
    ...     return layer.upper()
    >>> model = nn.Linear(2, 2)
    >>> remembered(model, "x", how), remembered(model, "x", how), calls
    ('X', 'X', ['x'])
    """
    try:
        kept = _SPLITS.setdefault(model, {})
    except TypeError:  # a model that cannot be weakly referenced: work it out every time
        return how(model, layer)
    key = (layer, f"{getattr(how, '__module__', '')}.{getattr(how, '__qualname__', how)}")
    structure = _structure(model)
    if key not in kept or kept[key][0] != structure:
        kept[key] = (structure, how(model, layer))
    return kept[key][1]  # type: ignore[no-any-return]


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


__all__ = ["LinearEntry", "Split", "entry_outputs", "linear_entry", "remembered", "split_at",
           "trace_keeping"]
