"""What every scan engine shares: the per-unit replacement values, ablated copies of a
layer output, and the collection of baseline predictions with ``evaluate()``'s checks.

Example::

    repl = replacement_values("zero", None, "layer3", out, 1)   # r = 0 for every channel
    stacked = ablated_copies(out, [(3,), (4, 7)], repl, 1)  # 2 copies: 3; 4 and 7 together
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from pytest_unitablate.core.ablation import ablate, check_means
from pytest_unitablate.core.data import PassDigest
from pytest_unitablate.core.evaluation import (
    checked_logits,
    logits_agree,
    select_logits,
    true_logprob,
)
from pytest_unitablate.core.tokens import call_model


@dataclass
class EngineOutput:
    """What a fast engine's single pass yields: per-unit and baseline predictions."""

    predictions: npt.NDArray[np.int64]  # (n_units, n_examples)
    baseline: npt.NDArray[np.int64]  # (n_examples,) unablated predictions
    labels: npt.NDArray[np.int64]
    num_classes: int
    fingerprint: str = ""
    plan: str = ""  # the prefix engine's units and examples per suffix pass, and why
    logprobs: npt.NDArray[np.float32] | None = None  # (n_units, n_examples) log p(true)
    baseline_logprob: npt.NDArray[np.float32] | None = None  # (n_examples,)


class Collector:
    """Accumulates baseline predictions and labels, with evaluate()'s checks on logits."""

    def __init__(self, output: int | str | None = None) -> None:
        self.output = output
        self.base: list[torch.Tensor] = []
        self.base_lp: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.width: int | None = None
        self.digest = PassDigest()

    def add(self, index: int, produced: Any, labels: torch.Tensor, picked: bool = False
            ) -> torch.Tensor:
        """Check and keep a batch's baseline; returns the logits picked from ``produced``
        (``picked``: ``produced`` is those logits already)."""
        logits = checked_logits(index, produced, labels, self.width,
                                None if picked else self.output)
        self.width = int(logits.shape[1])
        self.base.append(logits.argmax(dim=1).cpu())
        self.base_lp.append(true_logprob(logits, labels).cpu())
        self.labels.append(labels.cpu())
        return logits

    def finish(self, columns: list[torch.Tensor], lp_columns: list[torch.Tensor]
               ) -> EngineOutput:
        """The pass's output from per-batch ``(units, batch)`` predictions and log p(true)."""
        assert self.width is not None
        return EngineOutput(
            predictions=torch.cat(columns, dim=1).numpy().astype(np.int64),
            baseline=torch.cat(self.base).numpy().astype(np.int64),
            labels=torch.cat(self.labels).numpy().astype(np.int64),
            num_classes=self.width,
            fingerprint=self.digest.hexdigest(),
            logprobs=torch.cat(lp_columns, dim=1).numpy().astype(np.float32),
            baseline_logprob=torch.cat(self.base_lp).numpy().astype(np.float32),
        )


def replacement_values(ablation: str | float, means: dict[str, torch.Tensor] | None, layer: str,
                       like: torch.Tensor, dim: int) -> torch.Tensor:
    """The per-channel replacement r (zero, the channel means, or a constant)."""
    channels = like.shape[dim]
    if ablation == "zero":
        return torch.zeros(channels, dtype=like.dtype, device=like.device)
    if ablation == "mean":
        assert means is not None
        check_means(layer, means[layer], channels)
        return means[layer].to(dtype=like.dtype, device=like.device)
    return torch.full((channels,), float(ablation), dtype=like.dtype, device=like.device)


def ablated_copies(out: torch.Tensor, variants: Sequence[Sequence[int]], repl: torch.Tensor,
                   dim: int) -> torch.Tensor:
    """``len(variants)`` copies of ``out`` stacked on dim 0, copy ``j`` with the units of
    ``variants[j]`` ablated (together)."""
    k, batch = len(variants), out.shape[0]
    channels = out.shape[dim]
    keep = torch.ones(k, channels, dtype=out.dtype, device=out.device)
    rows = [j for j, v in enumerate(variants) for _ in v]
    keep[torch.as_tensor(rows), torch.as_tensor([u for v in variants for u in v])] = 0
    shape = [k] + [1] * out.dim()
    shape[dim + 1] = channels
    keep_v = keep.view(shape)
    add_v = (repl[None, :] * (1 - keep)).view(shape)
    stacked = out.unsqueeze(0) * keep_v + add_v
    return stacked.reshape(k * batch, *out.shape[1:])


#: Examples of the first batch every fast engine checks against real ablated forwards.
CHECKED_EXAMPLES = 16


def matches_real(model: Any, inputs: Any, layer: str, variant: Sequence[int],
                 logits: torch.Tensor, ablation: str | float,
                 means: dict[str, torch.Tensor] | None, *, unit: str = "channel",
                 channel_dim: int = 1, num_heads: int | None = None,
                 output: int | str | None = None) -> bool:
    """Whether an engine's ``logits`` for ``inputs`` with ``variant`` of ``layer`` ablated
    equal a real ablated forward (``ablate`` hooks on the untouched model) on the first
    :data:`CHECKED_EXAMPLES` examples: the check every fast engine makes on its first
    batch before it is trusted."""
    few = min(len(logits), CHECKED_EXAMPLES)
    with ablate(model, {layer: list(variant)}, ablation=ablation, means=means,
                channel_dim=channel_dim, unit=unit, num_heads=num_heads):
        real = select_logits(call_model(model, inputs[:few]), output)
    return logits_agree(logits[:few], real)


__all__ = ["CHECKED_EXAMPLES", "Collector", "EngineOutput", "ablated_copies", "matches_real",
           "replacement_values"]
