"""Which dimension of a layer's output holds its units, told by the model's own modules.

Dimension 1 is right for ``N,C`` outputs and for the ``N,C,H,W`` outputs of a CNN, and
silently wrong elsewhere: on a Swin or ConvNeXt block's channels-last ``N,H,W,C`` it is an
image *row*, on a TransformerLens ``hook_z`` (``N,T,heads,d_head``) a *token*. So, when a
check does not say ``channel_dim``, a 3-D or higher output gets dimension 1 only when the
modules vouch for it:

* a module that sets a feature count (*a decider*): convolutions, batch/instance/group
  norms (channels first), ``Linear``, ``LayerNorm``, ``RMSNorm``, Hugging Face ``Conv1D``,
  ``Embedding`` (features last). Its own output is laid out as its kind says;
* a layer that sets none (an activation, dropout, pooling) takes the feature count of
  what runs before it (its previous sibling in registration order, or its parent's), so
  ``ReLU`` after a convolution is channels first; a torchvision ``Permute`` turns the
  side;
* a block is judged by its last decider (and any ``Permute`` after it), and a block made
  only of convolutions, norms, pooling and activations (a ResNet block, an Inception
  module that concatenates) is channels first;
* otherwise the units are along the dimension whose size equals the feature count, and
  dimension 1 only when a convolution or batch norm is among the modules (a token layer
  as long as it is wide is not channels first); a reshape after a convolution (a patch
  embedding) changes the rank and says nothing; when dimension 1 and the last have the
  same size and nothing settles it, the layer is refused;
* a TransformerLens ``HookPoint`` never is: its output is ``(batch, position, ...)``.
A stated ``channel_dim`` that the modules contradict (another dimension, of another size)
is refused too.

Anything else is refused with the shape and the likely value (:func:`unit_dim`).

Example::

    >>> import torch
    >>> from torchvision.ops.misc import Permute
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), Permute([0, 2, 3, 1]),
    ...                           torch.nn.LayerNorm(8))
    >>> unit_dim_of(net, "0", (2, 8, 6, 6), None)
    1
    >>> unit_dim_of(net, "2", (2, 6, 6, 8), None)
    Traceback (most recent call last):
    ...
    pytest_unitablate.errors.ConfigError: layer '2' outputs shape (N, 6, 6, 8), which is ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pytest_unitablate.core.layers import shape_text, unwrap_model
from pytest_unitablate.errors import ConfigError

Side = Literal["first", "last", "hook"]

_FIRST: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm,
    nn.LocalResponseNorm)
_LAST: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.Embedding,
                                      *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))
#: Modules that set no feature count and keep a CNN's N,C,H,W layout.
_KEEPS_CNN: tuple[type[nn.Module], ...] = (
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.dropout._DropoutNd, nn.Identity, nn.ZeroPad2d, nn.Upsample,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus)


@dataclass(frozen=True)
class Evidence:
    """What the modules say about a layer's output layout: the side its units are on
    (``None``: no side of their own), the feature count the layer carries (``None``:
    unknown) and the module that says so."""

    side: Side | None
    features: int | None
    source: str
    #: a block made only of CNN parts (convolutions, norms, pooling, activations)
    cnn_block: bool = False
    #: the layer is that module itself (its output is laid out as its kind says)
    own: bool = False
    #: a channels-first module (a convolution, a batch norm) is among the modules
    has_first: bool = False
    #: the output ranks a channels-first module gives (a Conv2d: 4); ``None``: any
    ranks: tuple[int, ...] | None = None


def _keeps(module: nn.Module) -> bool:
    """Whether ``module`` keeps the layout of what it is given (elementwise, pooling)."""
    return isinstance(module, _KEEPS_CNN) or type(module).__name__ in (
        "StochasticDepth", "DropPath", "Dropout", "GELUActivation", "NewGELUActivation")


def _is_hook_point(module: nn.Module) -> bool:
    return type(module).__name__ == "HookPoint"


def _ranks(module: nn.Module) -> tuple[int, ...] | None:
    """The output ranks of a channels-first module (a reshape after it changes them)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return (len(module.kernel_size) + 2,)
    name = type(module).__name__
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return {"1d": (2, 3), "2d": (4,), "3d": (5,)}.get(name[-2:])
    return None


def _decider(module: nn.Module) -> tuple[Side | None, int | None] | None:
    """``(side, feature count)`` when ``module`` itself sets the feature count."""
    if _is_hook_point(module):
        return "hook", None
    if isinstance(module, nn.modules.conv._ConvNd):
        return "first", int(module.out_channels)
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return "first", int(module.num_features)
    if isinstance(module, nn.GroupNorm):
        return "first", int(module.num_channels)
    if isinstance(module, nn.LocalResponseNorm):
        return "first", None
    if isinstance(module, (nn.Linear, nn.Bilinear)):
        return "last", int(module.out_features)
    if isinstance(module, nn.Embedding):
        return "last", int(module.embedding_dim)
    shape = getattr(module, "normalized_shape", None)
    if isinstance(module, _LAST) and isinstance(shape, tuple) and shape:
        # timm's LayerNorm2d subclasses nn.LayerNorm and works on N,C,H,W
        side: Side = "first" if type(module).__name__.endswith("2d") else "last"
        return side, int(shape[-1])
    if type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int):
        return "last", int(getattr(module, "nf"))  # noqa: B009  (Hugging Face GPT-2 Conv1D)
    if not any(True for _ in module.children()):
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 1 and \
                not isinstance(module, _KEEPS_CNN):
            return None, int(weight.numel())  # a hand-written norm: count, no side
    return None


def _is_leaf(module: nn.Module) -> bool:
    return not any(True for _ in module.children())


def _permuted(module: nn.Module, side: Side | None) -> Side | bool | None:
    """The side after a torchvision ``Permute`` (``False``: ``module`` is none): moving
    the last dimension to 1 makes channels-last channels first, and back."""
    dims = getattr(module, "dims", None)
    if type(module).__name__ != "Permute" or not isinstance(dims, (list, tuple)):
        return False
    n = len(dims)
    to_first = list(dims) == [0, n - 1, *range(1, n - 1)]
    to_last = list(dims) == [0, *range(2, n), 1]
    if side == "last" and to_first:
        return "first"
    if side == "first" and to_last:
        return "last"
    return None


class _Modules:
    def __init__(self, model: nn.Module) -> None:
        self.root = unwrap_model(model)
        self.by_name = dict(self.root.named_modules())

    def children(self, name: str) -> list[str]:
        module = self.by_name[name]
        return [f"{name}.{c}" if name else c for c, _ in module.named_children()]

    def evidence(self, name: str, depth: int = 0) -> Evidence | None:
        if depth > 64:
            return None
        module = self.by_name[name]
        own = _decider(module)
        if own is not None:
            first = own[0] == "first"
            return Evidence(own[0], own[1], name, cnn_block=first, own=True,
                            has_first=first, ranks=_ranks(module) if first else None)
        leaves = [(n, m) for n, m in module.named_modules(prefix=name) if n != name]
        found = [(n, m, d) for n, m in leaves if (d := _decider(m)) is not None]
        if found:
            last, _, (side, count) = found[-1]
            firsts = [m for _, m, d in found if d[0] == "first"]
            pure = all(isinstance(m, (*_FIRST, *_KEEPS_CNN)) or not _is_leaf(m)
                       for _, m in leaves) and len(firsts) == len(found)
            ranks = _ranks(firsts[-1]) if firsts else None
            after = [m for n, m in leaves[[n for n, _ in leaves].index(last) + 1:]
                     if _is_leaf(m)]
            for m in after:  # a Permute after it turns the side; anything else unknown
                turned = _permuted(m, side)
                if turned is False and not _keeps(m):
                    side = None
                elif turned is not False:
                    side = turned if isinstance(turned, str) else None
            return Evidence(side, count, last, cnn_block=pure,
                            has_first=bool(firsts) or side == "first", ranks=ranks)
        before = self.previous(name, depth + 1)
        if before is None:
            return None
        turned = _permuted(module, before.side)
        if turned is not False:
            side = turned if isinstance(turned, str) else None
            return Evidence(side, before.features, before.source,
                            has_first=before.has_first or side == "first", ranks=before.ranks)
        # a container's own type says nothing: its leaf modules decide (nested blocks of
        # activations keep the CNN layout as one flat block does)
        keeps = all(_keeps(m) for _, m in [(n, m) for n, m in leaves if _is_leaf(m)]
                    or [(name, module)])
        # an activation after a CNN layer is still a CNN layer; anything else keeps only
        # the feature count (a Permute changes the side)
        return Evidence(before.side if keeps and before.side != "hook" else None,
                        before.features, before.source, before.cnn_block and keeps,
                        has_first=before.has_first, ranks=before.ranks)

    def previous(self, name: str, depth: int) -> Evidence | None:
        """What runs before ``name``: its previous sibling's evidence, or its parent's
        previous one (registration order, which is not always the order of the forward:
        the feature count is checked against the output's shape)."""
        if not name:
            return None
        parent = name.rpartition(".")[0]
        siblings = self.children(parent)
        at = siblings.index(name)
        if at > 0:
            return self.evidence(siblings[at - 1], depth + 1)
        return self.previous(parent, depth + 1)  # the root's first child: None


def layer_evidence(model: nn.Module, layer: str) -> Evidence | None:
    """What ``model``'s modules say about ``layer``'s output layout (``None``: nothing).

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    >>> found = layer_evidence(net, "1")
    >>> found.side, found.features, found.source, found.cnn_block
    ('first', 8, '0', True)
    """
    from pytest_unitablate.core.layers import _strip_wrapper_prefix

    modules = _Modules(model)
    return modules.evidence(_strip_wrapper_prefix(model, layer))


HEAD_HOOKS = ("hook_z", "hook_result")


def _refusal(layer: str, shape: Sequence[int], batch: int, evidence: Evidence | None,
             likely: int | None) -> ConfigError:
    text = shape_text(shape, batch=batch)
    where = "on the check, or for the whole spec"
    if evidence is not None and evidence.side == "hook" and evidence.source == layer:
        heads = layer.rsplit(".", 1)[-1] in HEAD_HOOKS
        return ConfigError(
            f"layer {layer!r} outputs shape {text}, a TransformerLens hook point "
            f"(batch, position, ...): its features are on the last dimension. Say "
            f"'channel_dim: -1' for them" + (
                "; for its heads (dimension 2) say 'unit: head'" if heads else "")
            + f", {where}")
    if len(shape) == 3 and likely in (None, len(shape) - 1):
        return ConfigError(
            f"layer {layer!r} outputs shape {text}, which is not N,C,H,W or N,C: say "
            f"which dimension holds its units, 'channel_dim: -1' for token features (a "
            f"transformer's N,T,C or T,N,C), 'channel_dim: 1' for N,C,L (a 1-D "
            f"convolution's); {where}")
    if likely == len(shape) - 1:
        return ConfigError(
            f"layer {layer!r} outputs shape {text}, which is channels-last (its "
            f"{evidence.features if evidence else ''} features are on the last dimension, "
            f"as {evidence.source if evidence else 'the module'!r} says): dimension 1 would "
            f"be an image row or a token. Say 'channel_dim: -1', {where}")
    return ConfigError(
        f"layer {layer!r} outputs shape {text}, and the model's modules do not tell which "
        f"dimension holds its units: say 'channel_dim: 1' for N,C,H,W (channels first) or "
        f"'channel_dim: -1' for channels-last N,H,W,C or token features; {where}")


def _likely(shape: Sequence[int], batch: int, evidence: Evidence | None) -> int | None:
    """Dimension 1 when the evidence shows the output is channels first; the last
    dimension when it shows channels last (refused, with that advice); ``None``: unknown."""
    ndim = len(shape)
    if evidence is None or batch != 0 or evidence.side == "hook":
        return None
    ev, count = evidence, evidence.features
    if ev.ranks is not None and ndim not in ev.ranks and (ev.side == "first" or ev.cnn_block):
        return None  # a reshape after the convolution (a patch embedding's flatten)
    if ev.own and ev.side == "first":
        return 1
    if ev.own and ev.side == "last":
        return ndim - 1
    if count is None:
        return 1 if ev.cnn_block else None
    first, last = shape[1] == count, shape[-1] == count
    if first and not last:
        # a token layer whose sequence length equals the width is not channels first: only
        # a convolution or batch norm among the modules says dimension 1 can be channels
        return 1 if ev.side == "first" or ev.cnn_block or ev.has_first else None
    if last and not first:
        return ndim - 1
    if first and last:
        if ev.cnn_block:
            return 1
        return ndim - 1 if ev.side == "last" and not ev.has_first else None
    return 1 if ev.cnn_block else None  # a CNN block that concatenates its branches


def unit_dim(layer: str, shape: Sequence[int], stated: int | None, batch: int = 0,
             evidence: Evidence | None = None) -> int:
    """The dimension of ``layer``'s output (``shape``) that holds its units: ``stated``
    (checked), 1 for an ``N,C`` output or one the modules show to be channels first
    (``evidence``, :func:`layer_evidence`); anything else is refused with the likely value.

    >>> unit_dim("fc", (8, 10), None), unit_dim("blk", (8, 17, 64), -1)
    (1, -1)
    >>> unit_dim("blk", (8, 17, 64), None)
    Traceback (most recent call last):
    ...
    pytest_unitablate.errors.ConfigError: layer 'blk' outputs shape (N, 17, 64), which ...
    """
    ndim = len(shape)
    if stated is not None:
        dim = stated if stated >= 0 else ndim + stated
        if not 0 <= dim < ndim or dim == batch:
            others = [d for d in range(ndim) if d != batch]
            raise ConfigError(
                f"channel_dim: {stated} for layer {layer!r}, whose output "
                f"{shape_text(shape, batch=batch)} has no such dimension besides the batch "
                f"(N): use one of {', '.join(str(d) for d in others)} or "
                f"{', '.join(str(d - ndim) for d in others)}")
        expected = _likely(shape, batch, evidence) if ndim >= 3 else None
        if expected is not None and expected != dim and shape[expected] != shape[dim] \
                and evidence is not None:
            raise ConfigError(
                f"channel_dim: {stated} for layer {layer!r} reads dimension {dim} of its "
                f"output {shape_text(shape, dim, batch)}, but {evidence.source!r} puts its "
                f"{evidence.features} units on dimension {expected} "
                f"{shape_text(shape, expected, batch)}: say channel_dim: "
                f"{expected if expected == 1 else -1} for this layer (on its check, when "
                f"the spec's channel_dim is for other layers)")
        return stated
    if ndim == 2 and batch == 0:
        return 1
    likely = _likely(shape, batch, evidence)
    if likely == 1:
        return 1
    raise _refusal(layer, shape, batch, evidence, likely)


def unit_dim_of(model: nn.Module, layer: str, shape: Sequence[int], stated: int | None,
                batch: int = 0) -> int:
    """:func:`unit_dim` with ``model``'s evidence about ``layer``."""
    return unit_dim(layer, shape, stated, batch, layer_evidence(model, layer))


class DimResolver:
    """A forward hook's unit dimension for one layer: ``stated``, or decided from the
    output's shape and the modules' evidence at the first call (cached per rank)."""

    def __init__(self, model: nn.Module, layer: str, stated: int | None) -> None:
        self.layer = layer
        self.stated = stated
        self.evidence = layer_evidence(model, layer)
        self._dims: dict[tuple[int, ...], int] = {}

    def __call__(self, tensor: torch.Tensor) -> int:
        """The non-negative unit dimension of ``tensor`` (this layer's output)."""
        shape = tuple(tensor.shape)
        dim = self._dims.get(shape)
        if dim is None:
            dim = unit_dim(self.layer, shape, self.stated, 0, self.evidence)
            dim = dim if dim >= 0 else len(shape) + dim
            self._dims[shape] = dim
        return dim


__all__ = ["DimResolver", "Evidence", "layer_evidence", "unit_dim", "unit_dim_of"]
