"""What a check's units are on the model under test: channels along a stated dimension of
the layer's output, or attention heads, resolved once per (model, layer).

No axis is guessed where it could be wrong. An ``N,C`` output, and an output the model's
modules show to be channels first (a CNN's ``N,C,H,W``: :mod:`pytest_unitablate.core.layout`),
has its units on dimension 1; any other output (``N,T,C`` tokens, a channels-last
``N,H,W,C``, a TransformerLens hook point) needs the check or the spec to say
``channel_dim:``, or the check is a located error that names the shape and the likely
value. (Dimension 1 of a transformer block's ``N,T,C`` output is a *token position*, of a
Swin block's ``N,H,W,C`` an image row.)

Example::

    units = resolve_units(spec, check, model, first_batch)
    units.count, units.core_args()       # 64, {"channel_dim": 2, "unit": "channel", ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pytest_unitablate.core.heads import head_site
from pytest_unitablate.core.layers import batch_dim, probe_layers
from pytest_unitablate.core.layout import unit_dim_of
from pytest_unitablate.spec.model import Check, Spec, UnitKind


@dataclass(frozen=True)
class LayerUnits:
    """A check's layer and what its units are, on one model."""

    layer: str
    unit: UnitKind
    #: the output dimension holding the units (channels; for heads, the last dimension of
    #: the heads' concatenated output)
    channel_dim: int
    num_heads: int | None
    #: how many units the layer has (channels, or heads)
    count: int
    #: the layer's output shape on a probe batch
    shape: tuple[int, ...]
    #: which dimension of that output is the batch (1 for a sequence-first transformer)
    batch_dim: int = 0

    @property
    def memo(self) -> tuple[Any, ...]:
        """What identifies these units in memory keys."""
        return (self.layer, self.unit, self.channel_dim, self.num_heads)

    def key(self) -> dict[str, Any]:
        """What identifies these units in store keys."""
        return {"layer": self.layer, "unit": self.unit, "channel_dim": self.channel_dim,
                "num_heads": self.num_heads}

    def core_args(self) -> dict[str, Any]:
        """The keyword arguments ``ablate()`` and ``scan()`` take for these units."""
        return {"channel_dim": self.channel_dim, "unit": self.unit,
                "num_heads": self.num_heads}


def _stated_dim(spec: Spec, check: Check) -> int | None:
    return spec.channel_dim_for(check)


def resolve_units(spec: Spec, check: Check, model: nn.Module, inputs: torch.Tensor
                  ) -> LayerUnits:
    """The check's units on ``model`` (probing forwards on a few of ``inputs``).

    Raises :class:`~pytest_unitablate.errors.ConfigError` (the engine locates it) for an
    output whose unit dimension is not stated and not ``N,C,H,W`` or ``N,C``, and for a
    stated dimension the output does not have.
    """
    unit = spec.unit_for(check)
    stated = _stated_dim(spec, check)
    if unit == "head":  # before probing: a head site says what to name when it is wrong
        head_site(model, check.layer, spec.num_heads_for(check))
    info = probe_layers(model, inputs[:2], [check.layer], channel_dim=stated or 1)[check.layer]
    shape = info.shape
    if unit == "head":
        stated_heads = spec.num_heads_for(check)
        site = head_site(model, check.layer, stated_heads)
        return LayerUnits(check.layer, "head", -1, stated_heads, site.num_heads, shape)
    batch = batch_dim(model, inputs, check.layer)
    batch = 0 if batch is None else batch
    stated = unit_dim_of(model, check.layer, shape, stated, batch)
    return LayerUnits(check.layer, "channel", stated, None, shape[stated], shape, batch)


__all__ = ["LayerUnits", "resolve_units"]
