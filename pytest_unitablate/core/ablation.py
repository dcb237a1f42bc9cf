"""Unit ablation as a context manager around forward hooks.

Ablating units ``U`` of a layer replaces the layer's output ``x`` by
``x * (1 - a) + r * a``, where ``a`` is 1 on the channels in ``U`` and 0 elsewhere and ``r`` is
0 (``"zero"``), the channel's mean over evaluation data (``"mean"``) or a constant (a number).
The hook returns a *new* tensor: the module's own output is never modified, so in-place ops
after the layer (``ReLU(inplace=True)``, ``out += identity``) cannot corrupt anything we
keep, and other hooks on the same module see the ablated value only if they run after ours.

Safety, per forward pass: a pre-hook on the root model resets call counters and a hook on
the root checks them, so a layer that runs twice (a shared module such as torchvision's
``BasicBlock.relu``) or never runs raises a clear error. Only our own hook handles are
removed on exit, also when forward raises; parameters, buffers and training flags are never
touched.

Example::

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Identity())
    >>> _ = torch.nn.init.dirac_(model[0].weight), torch.nn.init.zeros_(model[0].bias)
    >>> x = torch.ones(1, 3, 2, 2)
    >>> with ablate(model, {"0": [1]}):   # a convolution's output: channels on dimension 1
    ...     model(x)[0, :, 0, 0].tolist()
    [1.0, 0.0, 1.0]
    >>> with ablate(model, {"1": [0, 2]}, ablation=0.5):
    ...     model(x)[0, :, 0, 0].tolist()
    [0.5, 1.0, 0.5]
    >>> with ablate(torch.nn.Sequential(torch.nn.Identity()), {"0": [1]}):
    ...     pass   # nothing before it says where its channels are: refused at the forward

"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pytest_unitablate.core.evaluation import no_fast_path
from pytest_unitablate.core.layers import (
    check_units,
    first_tensor,
    normalise_units,
    require_single_call,
    resolve_layer,
    unwrap_model,
)
from pytest_unitablate.core.layout import DimResolver
from pytest_unitablate.core.tokens import call_model
from pytest_unitablate.errors import ConfigError, UnsupportedModelError

AblationArg = str | float | int


def _replacement_kind(ablation: AblationArg) -> str | float:
    if isinstance(ablation, bool):
        raise ConfigError(f"ablation must be 'zero', 'mean' or a number, got {ablation!r}")
    if isinstance(ablation, (int, float)):
        if not math.isfinite(float(ablation)):
            raise ConfigError(f"a constant ablation must be finite, got {ablation!r}")
        return float(ablation)
    if ablation in ("zero", "mean", "resample"):
        return ablation
    raise ConfigError(
        f"ablation must be 'zero', 'mean', 'resample' or a number (a constant), got "
        f"{ablation!r}"
    )


def channel_means(
    model: nn.Module,
    data: Any,
    layers: Sequence[str],
    *,
    channel_dim: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Mean of every channel of each layer's output over all examples and positions.

    Streams ``data`` once (anything :func:`pytest_unitablate.data.iter_batches` accepts);
    accumulates in float64. Returns ``{layer: tensor of shape (channels,)}``.
    ``channel_dim`` as for :func:`ablate` (``None``: decided from the model's modules).

    Example::

        means = channel_means(model, loader, ["layer4"])
        with ablate(model, {"layer4": [7]}, ablation="mean", means=means):
            ...
    """
    from pytest_unitablate.core.data import iter_batches
    from pytest_unitablate.core.evaluation import eval_mode, model_device

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(layers, 0)
    calls: dict[str, int] = dict.fromkeys(layers, 0)
    handles: list[RemovableHandle] = []
    dims = {name: DimResolver(model, name, channel_dim) for name in layers}

    def make_hook(name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            calls[name] += 1
            tensor = first_tensor(output)
            if tensor is None:
                raise UnsupportedModelError(f"layer {name!r} returns no tensor")
            dim = dims[name](tensor)
            moved = tensor.detach().movedim(dim, -1).reshape(-1, tensor.shape[dim])
            total = moved.sum(dim=0, dtype=torch.float64)
            sums[name] = total if name not in sums else sums[name] + total
            counts[name] += moved.shape[0]

        return hook

    target = torch.device(device) if device is not None else model_device(model)
    try:
        for name in layers:
            handles.append(resolve_layer(model, name).register_forward_hook(make_hook(name)))
        with eval_mode(model):
            for inputs, _ in iter_batches(data, device=target):
                before = dict(calls)
                call_model(model, inputs)
                for name in layers:
                    require_single_call(model, name, calls[name] - before[name])
    finally:
        for handle in handles:
            handle.remove()
    return {name: (sums[name] / counts[name]).to(torch.float32) for name in layers}


def check_means(layer: str, mean: torch.Tensor, channels: int) -> None:
    """Refuse channel means that do not have one value per channel of ``layer``.

    >>> check_means("conv", torch.zeros(3), 4)
    Traceback (most recent call last):
    ...
    pytest_unitablate.errors.ConfigError: channel means for layer 'conv' have 3 values ...
    """
    if mean.dim() != 1 or mean.numel() != channels:
        raise ConfigError(
            f"channel means for layer {layer!r} have {mean.numel()} values "
            f"(shape {tuple(mean.shape)}) but the layer has {channels} channels: compute them "
            f"with channel_means(model, data, [{layer!r}]) for this model"
        )


class _LayerAblation:
    """The forward hook of one layer: builds and caches the mask and replacement."""

    def __init__(
        self,
        name: str,
        units: tuple[int, ...],
        kind: str | float,
        mean: torch.Tensor | None,
        dims: DimResolver,
        source: Any = None,
    ) -> None:
        self.name = name
        self.units = units
        self.kind = kind
        self.mean = mean
        self.dims = dims
        self.source = source  # resample: a core.resample.ResampleSource
        self.calls = 0
        self._cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def _mask_and_replacement(
        self, tensor: torch.Tensor, dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tensor.dim(), dim, tensor.shape[dim], tensor.device, tensor.dtype)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        channels = tensor.shape[dim]
        check_units(self.name, self.units, channels)
        view = [1] * tensor.dim()
        view[dim] = channels
        keep = torch.ones(channels, dtype=tensor.dtype, device=tensor.device)
        keep[list(self.units)] = 0
        if self.kind in ("zero", "resample"):
            repl = torch.zeros(channels, dtype=tensor.dtype, device=tensor.device)
        elif self.kind == "mean":
            assert self.mean is not None
            check_means(self.name, self.mean, channels)
            repl = self.mean.to(device=tensor.device, dtype=tensor.dtype).clone()
        else:
            repl = torch.full((channels,), float(self.kind), dtype=tensor.dtype,
                              device=tensor.device)
        repl = repl * (1 - keep)
        result = (keep.view(view), repl.view(view))
        self._cache[key] = result
        return result

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        self.calls += 1
        tensor = first_tensor(output)
        if tensor is None:
            kind = type(output).__name__
            raise UnsupportedModelError(
                f"layer {self.name!r} returns a {kind}; only tensors (or tuples/lists whose "
                f"first element is a tensor) can be ablated"
            )
        if not self.units:
            return None  # an empty unit set changes nothing, bit for bit
        dim = self.dims(tensor)
        keep, repl = self._mask_and_replacement(tensor, dim)
        if self.kind == "resample":
            from pytest_unitablate.core.resample import check_batch_first

            check_batch_first(self.name, self.source.values, tensor.shape[0], tensor)
            repl = self.source.take(tensor.shape[0], self.name, tensor) * (1 - keep)
        ablated = tensor * keep + repl  # out of place: a new tensor
        if isinstance(output, torch.Tensor):
            return ablated
        rest = list(output[1:])
        return type(output)([ablated, *rest]) if isinstance(output, list) else (ablated, *rest)


@contextmanager
def ablate(
    model: nn.Module,
    units: Mapping[str, int | Sequence[int]],
    *,
    ablation: AblationArg = "zero",
    means: Mapping[str, torch.Tensor] | None = None,
    data: Any = None,
    channel_dim: int | None = None,
    device: torch.device | str | None = None,
    unit: str = "channel",
    num_heads: int | None = None,
    resample: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Ablate ``units`` (``{layer: unit or [units]}``) of ``model`` inside the ``with`` block.

    ``ablation`` is ``"zero"``, ``"mean"`` (channel means from ``means`` or computed once
    from ``data``), a number, or ``"resample"``: each example takes the units' values on
    another example, from ``resample`` (``{layer: ResampleSource}``,
    :mod:`pytest_unitablate.core.resample`; batches must come in the order its index was
    drawn for). ``channel_dim`` selects the channel dimension (negative
    values count from the end, e.g. ``-1`` for a transformer's features or a channels-last
    N,H,W,C output); ``None`` takes dimension 1 where that is known to be right (an N,C
    output, a CNN's N,C,H,W: :mod:`pytest_unitablate.core.layout`) and refuses any other
    output at its first forward with the likely value. With
    ``unit="head"`` the units are attention heads of each layer (an
    ``nn.MultiheadAttention`` or an output projection; :mod:`pytest_unitablate.core.heads`;
    ``num_heads`` where the module does not say), and ``means`` hold per-feature means of
    the heads' concatenated output (:func:`~pytest_unitablate.core.heads.head_means`). Raises
    :class:`~pytest_unitablate.errors.LayerNotFoundError` on entry and, at the first
    forward, :class:`~pytest_unitablate.errors.UnitOutOfRangeError`,
    :class:`~pytest_unitablate.errors.LayerCalledTwiceError` or
    :class:`~pytest_unitablate.errors.LayerNeverRanError`.

    Example::

        with ablate(model, {"layer4.1.conv2": [245]}, ablation="mean", data=loader):
            result = evaluate(model, loader)
    """
    kind = _replacement_kind(ablation)
    plan = normalise_units(units)
    if kind == "resample":
        missing = [name for name in plan if resample is None or name not in resample]
        if missing:
            raise ConfigError(f"resample ablation of {', '.join(map(repr, missing))} needs "
                              f"their values on the reference examples: pass resample=")
    if unit == "head":
        with _ablate_heads(model, plan, kind, means, data, device, num_heads,
                           resample) as hooks:
            yield hooks
        return
    if unit != "channel":
        raise ConfigError(f"unit must be 'channel' or 'head', got {unit!r}")
    modules = {name: resolve_layer(model, name) for name in plan}
    for name, unit_list in plan.items():
        for index in unit_list:
            if index < 0:
                check_units(name, [index], None)
    layer_means: dict[str, torch.Tensor] = {}
    if kind == "mean":
        missing = [name for name in plan if means is None or name not in means]
        if missing and data is None:
            raise ConfigError(
                f"mean ablation needs channel means for {', '.join(map(repr, missing))}: "
                f"pass means= or data="
            )
        if means is not None:
            layer_means.update({k: v for k, v in means.items() if k in plan})
        if missing:
            layer_means.update(
                channel_means(model, data, missing, channel_dim=channel_dim, device=device)
            )
    hooks = {
        name: _LayerAblation(name, plan[name], kind, layer_means.get(name),
                             DimResolver(model, name, channel_dim), (resample or {}).get(name))
        for name in plan
    }
    handles: list[RemovableHandle] = []
    try:
        for name, hook in hooks.items():
            handles.append(modules[name].register_forward_hook(hook))
        with counting_calls(model, hooks):
            yield hooks
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def counting_calls(model: nn.Module, hooks: Mapping[str, Any]) -> Iterator[None]:
    """Per forward of ``model``: reset each hook's ``calls`` before, and after it refuse a
    layer that ran twice or never (a shared module, a layer off the path). Torch's fused
    attention fast path is off inside (it would skip the hooked submodules)."""
    root = unwrap_model(model)

    def reset(module: nn.Module, args: Any) -> None:
        for hook in hooks.values():
            hook.calls = 0

    def verify(module: nn.Module, args: Any, output: Any) -> None:
        for name, hook in hooks.items():
            require_single_call(model, name, hook.calls)

    handles = [root.register_forward_pre_hook(reset), root.register_forward_hook(verify)]
    try:
        with no_fast_path():
            yield
    finally:
        for handle in handles:
            handle.remove()


class _HeadAblation:
    """Counts the calls of one head site per forward (the edit itself is the site's)."""

    def __init__(self) -> None:
        self.calls = 0

    def called(self) -> None:
        self.calls += 1


@contextmanager
def _ablate_heads(model: nn.Module, plan: Mapping[str, tuple[int, ...]], kind: str | float,
                  means: Mapping[str, torch.Tensor] | None, data: Any,
                  device: torch.device | str | None, num_heads: int | None,
                  resample: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """``ablate(..., unit="head")``: each layer's heads replaced on every forward."""
    from contextlib import ExitStack

    from pytest_unitablate.core.heads import ablation_edit, editing_heads, head_means, head_site

    sites = {name: head_site(model, name, num_heads) for name in plan}
    layer_means: dict[str, torch.Tensor] = {}
    if kind == "mean":
        for name in plan:
            if means is not None and name in means:
                layer_means[name] = means[name]
            elif data is not None:
                layer_means[name] = head_means(model, data, name, num_heads=num_heads,
                                               device=device)
            else:
                raise ConfigError(f"mean ablation of the heads of {name!r} needs their means: "
                                  f"pass means= or data=")
    hooks = {name: _HeadAblation() for name in plan}
    with ExitStack() as stack:
        for name, site in sites.items():
            edit = ablation_edit(site, plan[name], kind, layer_means.get(name),
                                 (resample or {}).get(name))
            stack.enter_context(editing_heads(site, edit, hooks[name].called))
        with counting_calls(model, hooks):
            yield hooks
