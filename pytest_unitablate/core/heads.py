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
from pytest_unitablate.errors import ConfigError, UnitOutOfRangeError, UnsupportedModelError

#: Attributes that hold the number of heads of an attention module (Hugging Face, GPT-2,
#: torch and common hand-written modules).
HEAD_COUNT_NAMES = ("num_heads", "num_attention_heads", "n_head", "n_heads")

#: Names of the output projection inside common attention modules (for messages).
PROJECTION_NAMES = ("out_proj", "o_proj", "c_proj", "dense", "proj", "wo")


@dataclass(frozen=True)
class HeadSite:
    """Where the heads of ``layer`` are: an ``nn.MultiheadAttention`` (``kind="mha"``) or
    the output projection called on the concatenated heads (``kind="projection"``)."""

    layer: str
    kind: Literal["mha", "projection"]
    module: nn.Module
    num_heads: int
    #: the head size, when known before a forward (``None``: from the input's last dim)
    head_dim: int | None

    def describe(self) -> str:
        size = f" of {self.head_dim}" if self.head_dim else ""
        what = "nn.MultiheadAttention" if self.kind == "mha" else \
            f"output projection {type(self.module).__name__}"
        return f"{self.layer!r} ({what}: {self.num_heads} heads{size})"


def _head_count(module: nn.Module) -> int | None:
    for name in HEAD_COUNT_NAMES:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    config = getattr(module, "config", None)
    value = getattr(config, "num_attention_heads", None)
    if isinstance(value, int) and value > 0:
        return value
    return None


def head_site(model: nn.Module, layer: str, num_heads: int | None = None) -> HeadSite:
    """The head site of ``layer``; a clear error for a layer that has no heads.

    ``num_heads`` overrides the count read from the module or its parent.
    """
    module = resolve_layer(model, layer)
    if isinstance(module, nn.MultiheadAttention):
        heads = num_heads or module.num_heads
        if heads != module.num_heads:
            raise ConfigError(f"num_heads: {num_heads} for {layer!r}, but that "
                              f"nn.MultiheadAttention has {module.num_heads} heads")
        return HeadSite(layer, "mha", module, heads, module.embed_dim // heads)
    modules = dict(unwrap_model(model).named_modules())
    parent = modules.get(layer.rsplit(".", 1)[0] if "." in layer else "")
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
            f"unit: head needs an nn.MultiheadAttention or the output projection of an "
            f"attention module, a linear layer named {', '.join(PROJECTION_NAMES)} (the "
            f"heads are its input); {layer!r} is a {type(module).__name__}. Its "
            f"{'channels' if isinstance(weight, torch.Tensor) else 'outputs'} are not heads: "
            f"name the attention's projection, or drop unit: head")
    known = _head_count(module) or (_head_count(parent) if parent else None)
    if num_heads is not None and known is not None and num_heads != known:
        raise ConfigError(f"num_heads: {num_heads} for {layer!r}, but its attention module "
                          f"says it has {known} heads")
    heads = num_heads or known
    if heads is None:
        raise UnsupportedModelError(
            f"unit: head needs an nn.MultiheadAttention or the output projection of an "
            f"attention module (o_proj, out_proj, c_proj, dense); {layer!r} is a "
            f"{type(module).__name__} and neither it nor its parent says how many heads "
            f"it has ({', '.join(HEAD_COUNT_NAMES)}): add num_heads: to the check")
    width = getattr(module, "in_features", None)
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


@contextmanager
def editing_heads(site: HeadSite, edit: Edit, on_call: Callable[[], None] | None = None
                  ) -> Iterator[None]:
    """Apply ``edit`` to the concatenated heads' output of ``site`` on every forward
    inside the block (out of place; hooks removed on exit, also on an exception).

    ``on_call`` is called once per call of the layer (the caller counts calls).
    """
    handles: list[RemovableHandle] = []
    if site.kind == "projection":
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
        modes: list[_ProjectionCall] = []

        def enter(module: nn.Module, args: Any) -> None:
            if on_call is not None:
                on_call()
            mode = _ProjectionCall(mha.out_proj.weight, edit)
            mode.__enter__()  # type: ignore[no-untyped-call]
            modes.append(mode)

        def leave(module: nn.Module, args: Any, output: Any) -> None:
            if modes:
                modes.pop().__exit__(None, None, None)  # type: ignore[no-untyped-call]

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
            model(inputs)


def head_values(model: nn.Module, data: Any, layer: str, *, num_heads: int | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The heads' concatenated output of ``layer`` on every example of ``data`` (CPU,
    batch dimension first: an ``nn.MultiheadAttention`` computes it sequence-first)."""
    from pytest_unitablate.core.resample import batch_first

    site = head_site(model, layer, num_heads)
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
