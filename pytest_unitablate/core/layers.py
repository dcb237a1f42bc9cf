"""Addressing layers and units of a model.

* A **layer** is a dotted module name exactly as ``model.named_modules()`` yields it
  (``conv5``, ``layer4.1.conv2``, ``features.10``).
* A **unit** is channel ``u`` of that module's output, **0-based** (NetDissect reports count
  from 1; we do not), along the channel dimension (1 for ``N,C`` and a CNN's ``N,C,H,W``;
  :mod:`pytest_unitablate.core.layout` decides where that is known and refuses elsewhere).

Wrappers: ``nn.DataParallel`` / ``DistributedDataParallel`` are unwrapped to ``.module`` and
names may be given with or without the ``module.`` prefix. TorchScript modules cannot carry
Python forward hooks and are refused. A ``torch.compile``'d model is unwrapped to
``_orig_mod``: hooks on the original module run in eager mode there, which is exactly the
network the compiled model computes.

Example::

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
    >>> resolve_layer(model, "0")
    Conv2d(1, 4, kernel_size=(3, 3), stride=(1, 1))
    >>> probe_layers(model, torch.zeros(1, 1, 5, 5), ["0"])["0"].channels
    4
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pytest_unitablate.core.tokens import call_model
from pytest_unitablate.errors import (
    LayerCalledTwiceError,
    LayerNeverRanError,
    LayerNotFoundError,
    UnitOutOfRangeError,
    UnsupportedModelError,
)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose submodules carry hooks: unwraps (Distributed)DataParallel.

    Raises :class:`UnsupportedModelError` for TorchScript and ``torch.compile`` wrappers.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError(
            "the model is a TorchScript module; forward hooks cannot run inside TorchScript. "
            "Pass the eager nn.Module it was scripted from."
        )
    seen = 0
    while seen < 8:
        seen += 1
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
            continue
        wrapped = getattr(type(model), "unitablate_wrapped", None)
        if isinstance(wrapped, str) and isinstance(getattr(model, wrapped, None), nn.Module):
            model = getattr(model, wrapped)  # core.tokens.NextTokenLogits
            continue
        if type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            raise UnsupportedModelError(
                "the model is wrapped by torch.compile; hooks inside a compiled graph are "
                "traced into it (or skipped) rather than run per forward. Ablate and "
                "evaluate the eager module instead: pass model._orig_mod"
            )
        break
    return model


def layer_names(model: nn.Module) -> list[str]:
    """All addressable layer names (the root module, named ``""``, excluded)."""
    return [name for name, _ in unwrap_model(model).named_modules() if name]


def closest(name: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    """The candidates closest to ``name``: suffix/prefix matches first, then difflib.

    >>> closest("conv5", ["features.conv5", "features.conv4", "fc"])
    ['features.conv5']
    """
    # the same last part (a candidate ending in ``.name``, or one ``name`` ends in, has it)
    tail = name.split(".")[-1]
    found = [cand for cand in candidates if cand.split(".")[-1] == tail]
    for cand in difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5):
        if cand not in found:
            found.append(cand)
    return found[:n]


def _strip_wrapper_prefix(model: nn.Module, name: str) -> str:
    wrapped = isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))
    if wrapped and name.startswith("module."):
        return name[len("module.") :]
    return name


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``.

    Raises :class:`LayerNotFoundError` naming the closest existing layers.
    """
    inner = unwrap_model(model)
    key = _strip_wrapper_prefix(model, name)
    modules = dict(inner.named_modules())
    if key and key in modules:
        found: nn.Module = modules[key]
        return found
    names = [n for n in modules if n]
    hints = closest(key, names)
    hint = f"; did you mean {', '.join(repr(h) for h in hints)}?" if hints else ""
    raise LayerNotFoundError(
        f"model {type(inner).__name__} has no layer {name!r}{hint} "
        f"(layers are dotted names from model.named_modules(); it has {len(names)})",
        layer=name,
        suggestions=hints,
    )


def batch_dim(model: nn.Module, inputs: torch.Tensor, layer: str) -> int | None:
    """Which dimension of ``layer``'s output is the batch: the one whose size follows the
    number of examples (two probing forwards, on 2 and on 3 of ``inputs``). ``None`` when
    that cannot be told (fewer than 3 inputs, or no dimension or several follow).

    A sequence-first transformer (``nn.TransformerEncoderLayer(batch_first=False)``)
    outputs ``(T, N, C)``: its batch is dimension 1, not 0.
    """
    if inputs.shape[0] < 3:
        return None
    two = probe_layers(model, inputs[:2], [layer], strict=False)[layer].shape
    three = probe_layers(model, inputs[:3], [layer], strict=False)[layer].shape
    if len(two) != len(three):
        return None
    moved = [d for d, (a, b) in enumerate(zip(two, three, strict=True)) if (a, b) == (2, 3)]
    return moved[0] if len(moved) == 1 else None


def shape_text(shape: Sequence[int], dim: int | None = None, batch: int = 0) -> str:
    """A layer output's shape as users read it, the batch (dimension ``batch``) named N and
    the unit dimension marked: ``(N, [17], 64)``.

    >>> shape_text((8, 17, 64), dim=1), shape_text((8, 64)), shape_text((8, 17, 64), -1)
    ('(N, [17], 64)', '(N, 64)', '(N, 17, [64])')
    >>> shape_text((17, 8, 64), dim=-1, batch=1)
    '(17, N, [64])'
    """
    parts = [("N" if i == batch else str(n)) for i, n in enumerate(shape)]
    if dim is not None and parts:
        at = dim if dim >= 0 else len(parts) + dim
        if 0 <= at < len(parts) and at != batch:
            parts[at] = f"[{parts[at]}]"
    return f"({', '.join(parts)})"


def check_units(layer: str, units: Iterable[int], channels: int | None,
                shape: Sequence[int] | None = None, dim: int | None = None,
                batch: int = 0) -> None:
    """Raise :class:`UnitOutOfRangeError` if a unit is not in ``0 .. channels - 1``
    (``channels=None``, not known yet: only negative units). With the layer's output
    ``shape`` and the unit dimension ``dim``, the message shows both."""
    for unit in units:
        if channels is None:
            if unit < 0:
                raise UnitOutOfRangeError(
                    f"unit {unit} of layer {layer!r} is negative: units are 0-based channel "
                    f"indices (NetDissect counts from 1)", layer=layer, unit=unit, channels=-1)
            continue
        if not 0 <= unit < channels:
            where = (f"whose output {shape_text(shape, dim, batch)} has {channels} units "
                     f"along dimension {dim}" if shape is not None and dim is not None
                     else f"which has {channels} channels")
            if shape is not None and dim is not None:
                # the unit dimension itself has ``channels <= unit`` entries: never offered
                wider = [d for d, n in enumerate(shape) if d != batch and n > unit]
                if wider:
                    where += (f"; if its units are along dimension {wider[-1]} (size "
                              f"{shape[wider[-1]]}), say channel_dim: {wider[-1] - len(shape)}")
            raise UnitOutOfRangeError(
                f"unit {unit} is out of range for layer {layer!r}, {where} (units are "
                f"0-based: 0..{channels - 1}; NetDissect counts from 1)",
                layer=layer,
                unit=unit,
                channels=channels,
            )


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a layer's output ablation acts on: the output, or element 0 of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@dataclass(frozen=True)
class LayerInfo:
    """What one forward pass showed about a layer."""

    name: str
    shape: tuple[int, ...]  # output shape of the probe batch
    channels: int  # size of the channel dimension
    calls: int  # how many times the module ran in that forward


def probe_layers(
    model: nn.Module,
    example_inputs: torch.Tensor,
    layers: Sequence[str],
    *,
    channel_dim: int = 1,
    strict: bool = True,
) -> dict[str, LayerInfo]:
    """Run one forward with temporary hooks and report each layer's output and call count.

    With ``strict`` (default), a layer that never ran raises :class:`LayerNeverRanError` and
    one that ran more than once raises :class:`LayerCalledTwiceError`. The model's modes are
    restored and all probe hooks removed, also on an exception.
    """
    from pytest_unitablate.core.evaluation import eval_mode

    modules = {name: resolve_layer(model, name) for name in layers}
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = dict.fromkeys(layers, 0)
    handles = []

    def make_hook(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            calls[name] += 1
            tensor = first_tensor(output)
            if tensor is not None and name not in shapes:
                shapes[name] = tuple(tensor.shape)

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        with eval_mode(model):
            call_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()

    infos: dict[str, LayerInfo] = {}
    for name in layers:
        if strict:
            require_single_call(model, name, calls[name])
        shape = shapes.get(name)
        if shape is None:
            if strict and calls[name]:
                raise UnsupportedModelError(
                    f"layer {name!r} returns no tensor (nor a tuple starting with one); "
                    f"choose a layer whose output is a tensor"
                )
            infos[name] = LayerInfo(name, (), 0, calls[name])
            continue
        dim = channel_dim if channel_dim >= 0 else len(shape) + channel_dim
        channels = shape[dim] if 0 <= dim < len(shape) else 0
        infos[name] = LayerInfo(name, shape, channels, calls[name])
    return infos


def suggest_single_call_layer(model: nn.Module, name: str) -> list[str]:
    """Layers near ``name`` that could run once: the last two convolutions or norms among
    its siblings (before or after it) and its parent, else its last two siblings.

    >>> net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.BatchNorm2d(1))
    >>> suggest_single_call_layer(net, "1")
    ['0', '2']
    """
    inner = unwrap_model(model)
    parent, _, _leaf = name.rpartition(".")
    siblings = [
        f"{parent}.{child}" if parent else child
        for child, _ in (resolve_layer(inner, parent) if parent else inner).named_children()
    ]
    others = [s for s in siblings if s != name]
    hints = [s for s in others if s.split(".")[-1].startswith(("bn", "conv"))][-2:]
    if parent:
        hints.append(parent)
    return hints or others[-2:]


def require_single_call(model: nn.Module, name: str, calls: int) -> None:
    """Raise if ``name`` ran zero times or more than once in one forward."""
    if calls == 0:
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        modules = dict(unwrap_model(model).named_modules())
        hint = "; choose a layer that the model's forward actually uses"
        if name.endswith(".out_proj") and isinstance(modules.get(parent),
                                                       nn.MultiheadAttention):
            hint = (f"; an nn.MultiheadAttention never calls its out_proj as a module (its "
                    f"weights are used inside the attention function): for its heads, name "
                    f"the attention layer {parent!r} with unit: head")
        if name.endswith(".proj") and "ShiftedWindowAttention" in type(
                modules.get(parent)).__name__:
            hint = (f"; torchvision's {type(modules.get(parent)).__name__} applies its proj "
                    f"inside a function, never as a module: for its heads name the "
                    f"attention {parent!r} with unit: head; for its output, {parent!r} with "
                    f"channel_dim: -1")
        raise LayerNeverRanError(
            f"layer {name!r} never ran during the forward pass, so ablating it would change "
            f"nothing{hint}")
    if calls > 1:
        hints = suggest_single_call_layer(model, name)
        hint = f"; ablate a layer that runs once instead, e.g. {', '.join(map(repr, hints))}"
        raise LayerCalledTwiceError(
            f"layer {name!r} ran {calls} times in one forward pass (a shared module, like "
            f"torchvision's BasicBlock.relu, or one the model calls once per use, like a "
            f"TransformerLens ln1 for query, key and value), so a unit of it is not one "
            f"activation map"
            + (hint if hints else "")
        )


def one_unit(value: Any) -> bool:
    """Whether ``value`` names one unit rather than several: anything not iterable, and
    0-d arrays and tensors (iterable in name only).

    >>> import torch
    >>> one_unit(3), one_unit(torch.tensor(3)), one_unit([3]), one_unit(torch.tensor([3]))
    (True, True, False, False)
    """
    return not isinstance(value, Iterable) or getattr(value, "ndim", None) == 0


def refuse_mask(layer: str, value: Any) -> None:
    """Refuse a boolean tensor given as units (a mask where indices were meant): torch
    reads its elements as 1 and 0.

    >>> import torch
    >>> refuse_mask("conv5", torch.tensor([3, 1]))  # indices: nothing to say
    """
    if getattr(value, "dtype", None) == torch.bool:
        raise TypeError(f"units of layer {layer!r} must be integers, got a boolean "
                        f"tensor (a mask? give its indices: mask.nonzero().flatten())")


def unit_indices(layer: str, value: Any) -> tuple[int, ...]:
    """Unit indices as Python ints: an int, or a sequence of them; numpy and torch integers
    count (``np.argsort`` output, a 0-d ``argmax``), bools and floats do not.

    >>> import numpy as np
    >>> unit_indices("conv5", np.array([3, 1])), unit_indices("conv5", np.int64(2))
    ((3, 1), (2,))
    """
    refuse_mask(layer, value)
    single = one_unit(value)
    out = []
    for unit in (value,) if single else tuple(value):
        try:
            if isinstance(unit, bool) or getattr(unit, "dtype", None) == torch.bool:
                raise TypeError  # (a float has no __index__; a torch bool has one)
            out.append(operator.index(unit))
        except TypeError:
            raise TypeError(f"units of layer {layer!r} must be integers, got {unit!r}"
                            ) from None
    return tuple(out)


def normalise_units(units: Mapping[str, int | Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """``{"conv5": 3}`` -> ``{"conv5": (3,)}``; rejects non-integer units."""
    return {layer: tuple(dict.fromkeys(unit_indices(layer, value)))
            for layer, value in units.items()}
