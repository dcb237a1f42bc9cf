"""Attention heads as units: where a head's output is, and how to ablate it exactly.

Head ``h`` of an attention layer is the slice ``h * d : (h + 1) * d`` of the output
projection's *input* (the heads' outputs concatenated, ``d`` = head size), at every
position. Ablating it replaces that slice by zero, its mean or a constant, and then lets
the projection mix the heads as usual. It is not a channel range of the attention module's
output: the projection has already mixed the heads there.

Two kinds of layer name a head site:

* an ``nn.MultiheadAttention`` (also inside ``nn.TransformerEncoderLayer`` and
  torchvision's ViT). Its output projection ``out_proj`` is never called as a module: its
  weights are used inside ``F.multi_head_attention_forward`` (so hooks on ``out_proj`` never
  fire; torch issue 78109). While the layer runs, a ``TorchFunctionMode`` takes that call,
  makes it with an identity projection (which returns the concatenated heads exactly),
  ablates the heads and applies the real projection. torch's fused fast path, which would
  skip all of this, is off during every pass (``core.evaluation.eval_mode``).
* the output projection itself, a module called on the concatenated heads (Hugging Face's
  ``o_proj``, ``out_proj``, ``c_proj``, ``dense``): a forward pre-hook ablates its input.
  The number of heads comes from ``num_heads=``, or from the module or its parent
  (``num_heads``, ``num_attention_heads``, ``n_head``, ``n_heads``, ``config.num_attention_heads``).

Means (``mean`` ablation) are per feature of the heads' concatenated output, over every
example and position (:func:`head_means`).

Example::

    >>> import torch
    >>> model = torch.nn.Sequential()
    >>> model.add_module("attn", torch.nn.MultiheadAttention(8, 2, batch_first=True))
    >>> site = head_site(model, "attn")
    >>> site.num_heads, site.head_dim
    (2, 4)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from pytest_unitablate.core.layers import resolve_layer, unwrap_model
from pytest_unitablate.core.tokens import call_model
from pytest_unitablate.errors import ConfigError, UnitOutOfRangeError, UnsupportedModelError

#: Attributes that hold the number of heads of an attention module (Hugging Face, GPT-2,
#: torch and common hand-written modules).
HEAD_COUNT_NAMES = ("num_heads", "num_attention_heads", "n_head", "n_heads")

#: Names of the output projection inside common attention modules (for messages).
PROJECTION_NAMES = ("out_proj", "o_proj", "c_proj", "dense", "proj", "wo")


@dataclass(frozen=True)
class HeadSite:
    """Where the heads of ``layer`` are: an ``nn.MultiheadAttention`` (``kind="mha"``),
    the output projection called on the concatenated heads (``kind="projection"``), a
    TransformerLens hook point with a head axis (``kind="hook"``) or an attention whose
    projection is applied functionally (torchvision Swin, ``kind="functional"``)."""

    layer: str
    kind: Literal["mha", "projection", "hook", "functional"]
    module: nn.Module
    num_heads: int
    #: the head size, when known before a forward (``None``: from the input's last dim)
    head_dim: int | None


_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
_MLP = re.compile(r"mlp|ffn|feed_?forward|intermediate", re.IGNORECASE)


def _head_count(module: nn.Module | None) -> int | None:
    """The head count ``module`` states: one of :data:`HEAD_COUNT_NAMES`, or its
    ``config`` (Hugging Face) or ``cfg`` (TransformerLens)."""
    if module is None:
        return None
    for owner in (module, getattr(module, "config", None), getattr(module, "cfg", None)):
        for name in HEAD_COUNT_NAMES:
            value = getattr(owner, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def find_head_count(model: nn.Module, layer: str) -> tuple[int, str] | None:
    """How many heads ``layer`` has, and where that was read: the module, its parent or
    grandparent, a sibling module of those (BERT keeps the count on
    ``attention.self``, next to ``attention.output.dense``), or the model's config."""
    modules = dict(unwrap_model(model).named_modules())
    parts = layer.split(".")
    for up in range(0, min(3, len(parts)) + 1):
        name = ".".join(parts[:len(parts) - up])
        owner = modules.get(name)
        found = _head_count(owner)
        if found is not None:
            return found, name or "the model"
        if up and owner is not None:
            for child, module in owner.named_children():
                found = _head_count(module)
                if found is not None:
                    return found, f"{name}.{child}" if name else child
    found = _head_count(unwrap_model(model))
    return (found, "the model's config") if found is not None else None


#: Children that compute queries and keys: what makes a module attention, whatever its name.
_QKV = ("q", "k", "q_proj", "k_proj", "query", "key", "qkv", "c_attn", "Wqkv", "in_proj",
        "qkv_proj", "query_key_value", "to_q", "to_k")


def _computes_attention(module: nn.Module | None) -> bool:
    if module is None:
        return False
    children = {name for name, _ in module.named_children()}
    return len(children & set(_QKV)) >= 1 and (
        bool(children & {"qkv", "c_attn", "Wqkv", "in_proj", "qkv_proj", "query_key_value"})
        or len(children & set(_QKV)) >= 2)


def _stated_count(model: nn.Module, layer: str, num_heads: int | None) -> int | None:
    """The head count of ``layer``: ``num_heads``, which must agree with a count the model
    states (:func:`find_head_count`), else that count; ``None`` when neither says."""
    found = find_head_count(model, layer)
    if num_heads is not None and found is not None and num_heads != found[0]:
        raise ConfigError(f"num_heads: {num_heads} for {layer!r}, but {found[1]!r} says it "
                          f"has {found[0]} heads")
    return num_heads or (found[0] if found else None)


def _in_attention(modules: dict[str, nn.Module], layer: str) -> bool:
    """Whether ``layer`` (a projection) belongs to an attention module, within two levels
    up: by the module's name or class, or by children that compute queries and keys;
    ``False`` when an MLP (by name or class) comes first, or nothing like attention."""
    parts = layer.split(".")
    for up in (1, 2):
        if up > len(parts):
            break
        module = modules.get(".".join(parts[:-up]))
        text = f"{parts[-up - 1] if len(parts) > up else ''} {type(module).__name__}"
        if _MLP.search(text):
            return False
        if _ATTENTION.search(text) or _computes_attention(module):
            return True
    return False


def _attention_projections(modules: dict[str, nn.Module], near: str) -> list[str]:
    """Attention output projections inside the block around ``near``."""
    block = ".".join(near.split(".")[:-2])
    return [name for name in modules
            if (name.startswith(block + ".") or not block)
            and name.rsplit(".", 1)[-1] in PROJECTION_NAMES
            and _in_attention(modules, name)][:2]


def _tl_site(model: nn.Module, layer: str, module: nn.Module,
             num_heads: int | None) -> HeadSite:
    """A TransformerLens hook point with a head axis (``hook_z``, ``hook_result``)."""
    leaf = layer.rsplit(".", 1)[-1]
    if leaf not in ("hook_z", "hook_result"):
        modules = dict(unwrap_model(model).named_modules())
        parts = layer.split(".")
        near = next((".".join(parts[:i]) + ".attn" for i in range(len(parts) - 1, 0, -1)
                     if ".".join(parts[:i]) + ".attn.hook_z" in modules), None)
        where = (f"'{near}.hook_z' (batch, position, head, d_head), or '{near}.hook_result' "
                 f"with use_attn_result" if near else
                 "a block's 'attn.hook_z' (batch, position, head, d_head)")
        raise UnsupportedModelError(
            f"unit: head on the TransformerLens hook point {layer!r}: a head's output is "
            f"{where}; name one of those")
    heads = _stated_count(model, layer, num_heads)
    if heads is None:
        raise UnsupportedModelError(
            f"{layer!r} is a TransformerLens hook point whose model has no cfg.n_heads: "
            f"say num_heads:")
    cfg = getattr(modules_parent(model, layer), "cfg", None)
    d_head = getattr(cfg, "d_head", None) if leaf == "hook_z" else None
    return HeadSite(layer, "hook", module, heads, d_head if isinstance(d_head, int) else None)


def modules_parent(model: nn.Module, layer: str) -> nn.Module | None:
    """The module that holds ``layer`` (``None`` for a top-level layer)."""
    if "." not in layer:
        return None
    return dict(unwrap_model(model).named_modules()).get(layer.rsplit(".", 1)[0])


def _is_swin_attention(module: nn.Module | None) -> bool:
    return module is not None and "ShiftedWindowAttention" in type(module).__name__ and \
        isinstance(getattr(module, "proj", None), nn.Linear)


def head_site(model: nn.Module, layer: str, num_heads: int | None = None) -> HeadSite:
    """The head site of ``layer``; a clear error for a layer that has no heads.

    ``num_heads`` overrides the count read from the model (:func:`find_head_count`); it
    must agree with a count the model states.
    """
    module = resolve_layer(model, layer)
    if isinstance(module, nn.MultiheadAttention):
        heads = num_heads or module.num_heads
        if heads != module.num_heads:
            raise ConfigError(f"num_heads: {num_heads} for {layer!r}, but that "
                              f"nn.MultiheadAttention has {module.num_heads} heads")
        return HeadSite(layer, "mha", module, heads, module.embed_dim // heads)
    if type(module).__name__ == "HookPoint":
        return _tl_site(model, layer, module, num_heads)
    if isinstance(getattr(module, "W_O", None), torch.Tensor) and \
            type(getattr(module, "hook_z", None)).__name__ == "HookPoint":
        raise UnsupportedModelError(
            f"layer {layer!r} is a TransformerLens attention module: its output projection "
            f"W_O is a parameter, not a module. For its heads name '{layer}.hook_z' with "
            f"unit: head (heads are dimension 2 of its output)")
    parent = modules_parent(model, layer)
    if _is_swin_attention(module) or (_is_swin_attention(parent)
                                      and layer.endswith(".proj")):
        owner = module if _is_swin_attention(module) else parent
        assert owner is not None
        name = layer if owner is module else layer.rsplit(".", 1)[0]
        if owner is not module:
            raise UnsupportedModelError(
                f"torchvision's {type(owner).__name__} applies {layer!r} inside a function "
                f"(it never runs as a module): for its heads name the attention {name!r} "
                f"with unit: head")
        heads = int(getattr(owner, "num_heads"))  # noqa: B009
        if num_heads is not None and num_heads != heads:
            raise ConfigError(f"num_heads: {num_heads} for {layer!r}, but that "
                              f"{type(owner).__name__} has {heads} heads")
        proj = getattr(owner, "proj")  # noqa: B009
        return HeadSite(layer, "functional", owner, heads, int(proj.in_features) // heads)
    modules = dict(unwrap_model(model).named_modules())
    if _head_count(module) is not None or _computes_attention(module) or \
            _ATTENTION.search(type(module).__name__):
        around = [layer, layer.rsplit(".", 1)[0]] if "." in layer else [layer]
        elsewhere = [n for n in modules if n != layer and any(n.startswith(a + ".")
                                                              for a in around)
                     and n.rsplit(".", 1)[-1] in PROJECTION_NAMES
                     and _in_attention(modules, n)]
        if elsewhere and not any(isinstance(getattr(module, name, None), nn.Module)
                                 for name in PROJECTION_NAMES):
            raise UnsupportedModelError(
                f"layer {layer!r} is an attention module ({type(module).__name__}) whose "
                f"heads are mixed by a projection elsewhere: for unit: head name "
                f"{elsewhere[0]!r} (the heads are its input)")
    inner = [name for name in PROJECTION_NAMES
             if isinstance(getattr(module, name, None), nn.Module)]
    if inner and _head_count(module) is not None:
        raise UnsupportedModelError(
            f"layer {layer!r} is an attention module ({type(module).__name__}); for unit: "
            f"head name its output projection, e.g. '{layer}.{inner[0]}' (the heads are its "
            f"input, before it mixes them)")
    weight = getattr(module, "weight", None)
    last = layer.rsplit(".", 1)[-1]
    if last not in PROJECTION_NAMES or not (isinstance(weight, torch.Tensor)
                                            and weight.dim() == 2):
        raise UnsupportedModelError(
            f"unit: head needs an nn.MultiheadAttention, the output projection of an "
            f"attention module (a linear layer named {', '.join(PROJECTION_NAMES)}: the heads "
            f"are its input) or a TransformerLens hook_z; {layer!r} is a "
            f"{type(module).__name__}. Its "
            f"{'channels' if isinstance(weight, torch.Tensor) else 'outputs'} are not heads: "
            f"name the attention's projection, or drop unit: head")
    if not _in_attention(modules, layer):
        owner_name = layer.rsplit(".", 1)[0] if "." in layer else "the model"
        near = _attention_projections(modules, layer)
        hint = f"For heads name the attention's projection ({', '.join(map(repr, near))}). " \
            if near else ""
        raise UnsupportedModelError(
            f"{layer!r} is the output projection of {owner_name!r} "
            f"({type(parent or model).__name__}), which is not an attention module: its "
            f"input features are neurons, not heads, and num_heads would only cut them into "
            f"blocks. {hint}For its neurons drop unit: head and name the layer before "
            f"it (its output is these neurons), with channel_dim: -1")
    heads = _stated_count(model, layer, num_heads)
    if heads is None:
        raise UnsupportedModelError(
            f"{layer!r} is the output projection of an attention module, but neither it, "
            f"its attention module, a module beside it nor the model's config says how "
            f"many heads it has ({', '.join(HEAD_COUNT_NAMES)}): add num_heads: to the check "
            f"or the spec")
    width: int | None = getattr(module, "in_features", None)
    if width is None and type(module).__name__ == "Conv1D":
        width = int(weight.shape[0])  # Hugging Face Conv1D: weight (in, out)
    if isinstance(width, int) and width % heads:
        raise ConfigError(f"{layer!r} takes {width} features, which do not split into "
                          f"{heads} heads")
    return HeadSite(layer, "projection", module, heads,
                    width // heads if isinstance(width, int) else None)


def check_heads(site: HeadSite, heads: Sequence[int]) -> None:
    """Refuse a head outside ``0 .. num_heads - 1``."""
    for head in heads:
        if not 0 <= head < site.num_heads:
            raise UnitOutOfRangeError(
                f"head {head} is out of range for layer {site.layer!r}, which has "
                f"{site.num_heads} heads (heads are 0-based: 0..{site.num_heads - 1})",
                layer=site.layer, unit=head, channels=site.num_heads)


def head_mask(width: int, num_heads: int, heads: Sequence[int], like: torch.Tensor
              ) -> torch.Tensor:
    """1 on the features of the heads that stay, 0 on those of ``heads`` (``width``
    features in ``num_heads`` heads).

    >>> head_mask(6, 3, [1], torch.zeros(1)).tolist()
    [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    """
    if width % num_heads:
        raise ConfigError(f"{width} features do not split into {num_heads} heads")
    size = width // num_heads
    keep = torch.ones(width, dtype=like.dtype, device=like.device)
    for head in heads:
        keep[head * size:(head + 1) * size] = 0
    return keep


#: ``edit(concatenated_heads) -> tensor``: what a head site does to the heads' output
#: (features on the last dimension).
Edit = Callable[[torch.Tensor], torch.Tensor]


class _ProjectionCall(TorchFunctionMode):
    """Takes ``F.multi_head_attention_forward`` of one attention module while it runs:
    the concatenated heads come out of the call made with an identity projection, ``edit``
    changes them, and the module's own projection is applied after."""

    def __init__(self, weight: torch.Tensor, edit: Edit) -> None:
        super().__init__()
        self.weight = weight
        self.edit = edit

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.multi_head_attention_forward and len(args) > 12 and \
                args[11] is self.weight:
            call = list(args)
            weight, bias = call[11], call[12]
            call[11] = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
            call[12] = None
            heads, weights = func(*call, **kwargs)  # (T, N, E): every head's output
            return F.linear(self.edit(heads), weight, bias), weights
        return func(*args, **kwargs)


class _LinearCall(TorchFunctionMode):
    """Takes the ``F.linear`` call of one weight while an attention module runs (torchvision
    Swin applies its output projection that way): ``edit`` changes its input, the
    concatenated heads."""

    def __init__(self, weight: torch.Tensor, edit: Edit) -> None:
        super().__init__()
        self.weight = weight
        self.edit = edit

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear and len(args) > 1 and args[1] is self.weight:
            return func(self.edit(args[0]), *args[1:], **kwargs)
        return func(*args, **kwargs)


@contextmanager
def editing_heads(site: HeadSite, edit: Edit, on_call: Callable[[], None] | None = None
                  ) -> Iterator[None]:
    """Apply ``edit`` to the concatenated heads' output of ``site`` on every forward
    inside the block (out of place; hooks removed on exit, also on an exception).

    ``on_call`` is called once per call of the layer (the caller counts calls).
    """
    handles: list[RemovableHandle] = []
    if site.kind == "hook":
        def post(module: nn.Module, args: Any, output: Any) -> Any:
            if on_call is not None:
                on_call()
            if not isinstance(output, torch.Tensor) or output.dim() < 3:
                raise UnsupportedModelError(
                    f"the hook point {site.layer!r} gave no (batch, position, head, ...) "
                    f"tensor")
            if output.shape[2] != site.num_heads:
                raise ConfigError(
                    f"{site.layer!r} outputs {tuple(output.shape)}: {output.shape[2]} heads "
                    f"on dimension 2, not {site.num_heads}")
            flat = output.reshape(*output.shape[:2], -1)
            return edit(flat).reshape(output.shape)

        handles.append(site.module.register_forward_hook(post))
    elif site.kind == "functional":
        weight = getattr(site.module, "proj").weight  # noqa: B009
        modes: list[_LinearCall] = []

        def enter_linear(module: nn.Module, args: Any) -> None:
            if on_call is not None:
                on_call()
            mode = _LinearCall(weight, edit)
            mode.__enter__()  # type: ignore[no-untyped-call]
            modes.append(mode)

        def leave_linear(module: nn.Module, args: Any, output: Any) -> None:
            if modes:
                modes.pop().__exit__(None, None, None)  # type: ignore[no-untyped-call]

        handles.append(site.module.register_forward_pre_hook(enter_linear))
        handles.append(site.module.register_forward_hook(leave_linear, always_call=True))
    elif site.kind == "projection":
        def pre(module: nn.Module, args: Any) -> Any:
            if on_call is not None:
                on_call()
            if not args or not isinstance(args[0], torch.Tensor):
                raise UnsupportedModelError(
                    f"the output projection {site.layer!r} was called without a tensor "
                    f"as its first argument")
            return (edit(args[0]), *args[1:])

        handles.append(site.module.register_forward_pre_hook(pre))
    else:
        mha = site.module
        assert isinstance(mha, nn.MultiheadAttention)
        mha_modes: list[_ProjectionCall] = []

        def enter(module: nn.Module, args: Any) -> None:
            if on_call is not None:
                on_call()
            mode = _ProjectionCall(mha.out_proj.weight, edit)
            mode.__enter__()  # type: ignore[no-untyped-call]
            mha_modes.append(mode)

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            if mha_modes:
                mha_modes.pop().__exit__(None, None, None)  # type: ignore[no-untyped-call]

        handles.append(mha.register_forward_pre_hook(enter))
        handles.append(mha.register_forward_hook(leave, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def ablation_edit(site: HeadSite, heads: Sequence[int], kind: str | float,
                  mean: torch.Tensor | None, source: Any = None) -> Edit:
    """The edit that replaces ``heads`` of ``site`` by zero, ``mean`` (per feature), a
    constant, or (``resample``) their values on other examples (``source``, a
    :class:`~pytest_unitablate.core.resample.ResampleSource`); refuses a head out of range
    at once."""
    check_heads(site, heads)
    if kind == "resample" and site.kind == "functional":
        raise ConfigError(
            f"resample ablation of the heads of {site.layer!r}: torchvision's "
            f"{type(site.module).__name__} computes them per window, not per example, so "
            f"they cannot take another example's values; use zero or mean")
    cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def edit(x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[-1], x.dtype, x.device)
        if key not in cache:
            keep = head_mask(x.shape[-1], site.num_heads, heads, x)
            if kind in ("zero", "resample"):
                repl = torch.zeros_like(keep)
            elif kind == "mean":
                assert mean is not None
                if mean.numel() != x.shape[-1]:
                    raise ConfigError(f"head means for {site.layer!r} have {mean.numel()} "
                                      f"values, but its heads' output has {x.shape[-1]}")
                repl = mean.to(dtype=x.dtype, device=x.device)
            else:
                repl = torch.full_like(keep, float(kind))
            cache[key] = (keep, repl * (1 - keep))
        keep, repl = cache[key]
        if kind == "resample":
            from pytest_unitablate.core.resample import batch_first, check_batch_first

            ours = batch_first(site.kind, x)
            check_batch_first(site.layer, source.values, ours.shape[0], ours)
            taken = source.take(ours.shape[0], site.layer, x)
            return x * keep + batch_first(site.kind, taken) * (1 - keep)
        return x * keep + repl

    return edit


def head_means(model: nn.Module, data: Any, layer: str, *, num_heads: int | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Mean of every feature of the heads' concatenated output of ``layer`` over every
    example and position of ``data`` (float64 sums): shape ``(num_heads * head_dim,)``."""
    site = head_site(model, layer, num_heads)
    sums: list[torch.Tensor] = []
    count = [0]

    def capture(x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(-1, x.shape[-1])
        sums.append(flat.sum(dim=0, dtype=torch.float64))
        count[0] += flat.shape[0]
        return x

    _run_capturing(model, data, site, capture, device)
    if not sums:
        raise UnsupportedModelError(f"layer {layer!r} never ran on the data")
    return (torch.stack(sums).sum(dim=0) / count[0]).to(torch.float32)


def _run_capturing(model: nn.Module, data: Any, site: HeadSite,
                   capture: Callable[[torch.Tensor], torch.Tensor],
                   device: torch.device | str | None) -> None:
    """One eval pass of ``model`` over ``data`` with ``capture`` seeing the heads'
    concatenated output of ``site`` (what :func:`head_means` and :func:`head_values`
    collect)."""
    from pytest_unitablate.core.data import iter_batches
    from pytest_unitablate.core.evaluation import eval_mode, model_device

    target = torch.device(device) if device is not None else model_device(model)
    with editing_heads(site, capture), eval_mode(model):
        for inputs, _ in iter_batches(data, device=target):
            call_model(model, inputs)


def head_values(model: nn.Module, data: Any, layer: str, *, num_heads: int | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The heads' concatenated output of ``layer`` on every example of ``data`` (CPU,
    batch dimension first: an ``nn.MultiheadAttention`` computes it sequence-first)."""
    from pytest_unitablate.core.resample import batch_first

    site = head_site(model, layer, num_heads)
    if site.kind == "functional":
        raise ConfigError(
            f"resample ablation of the heads of {layer!r}: torchvision's "
            f"{type(site.module).__name__} computes them per window, not per example; use "
            f"zero or mean")
    parts: list[torch.Tensor] = []

    def capture(x: torch.Tensor) -> torch.Tensor:
        parts.append(batch_first(site.kind, x).detach().cpu())
        return x

    _run_capturing(model, data, site, capture, device)
    if not parts:
        raise UnsupportedModelError(f"layer {layer!r} never ran on the reference data")
    return torch.cat(parts)


__all__ = ["HEAD_COUNT_NAMES", "HeadSite", "ablation_edit", "check_heads", "editing_heads",
           "head_mask", "head_means", "head_site", "head_values"]
