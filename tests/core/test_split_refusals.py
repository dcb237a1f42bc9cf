"""``split_at``: a network cut at a layer into a prefix and a suffix that give its
logits, or the reason it cannot be cut exactly, word for word (the reason reaches the
user as the scan's ``reason`` and the report's ``engine_reason``)."""

from __future__ import annotations

import pytest
import torch
from numerics import assert_f32_close
from torch import nn

from pytest_unitablate.core.scan.split import split_at


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(4, 6)
        self.act = nn.ReLU()
        self.unused = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(self.act(h) + h)  # type: ignore[no-any-return]


class Branching(Chain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return self.fc2(self.act(self.fc1(x)))  # type: ignore[no-any-return]
        return self.fc2(self.fc1(x))  # type: ignore[no-any-return]


class Twice(Chain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.act(self.fc1(x)) - 1))  # type: ignore[no-any-return]


class Discarding(Chain):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.unused(x)  # called, and its output thrown away
        return super().forward(x)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))  # type: ignore[no-any-return]


def test_a_split_gives_the_models_logits_with_what_the_suffix_needs_besides() -> None:
    model = Chain().eval()
    split, why = split_at(model, "act")
    assert split is not None and why == ""
    x = torch.randn(5, 4)
    layer_out, *extras = split.prefix(x)
    assert split.n_extras == len(extras) == 1  # fc1's output, read again after the layer
    assert_f32_close(split.suffix(layer_out, *extras), model(x), terms=12)


@pytest.mark.parametrize(("model", "layer", "why"), [
    (Twice(), "act", "torch.fx sees 2 calls of 'act' (a module called more than once per "
                     "forward)"),
    (Attention(), "attn.out_proj",
     "torch.fx sees 0 calls of 'attn.out_proj' (a module that reads its submodules' "
     "weights without calling them, as nn.TransformerEncoderLayer and "
     "nn.MultiheadAttention do on their fused paths, or a layer inside a module fx keeps "
     "whole)"),
    (Discarding(), "unused", "the model's output does not depend on 'unused'"),
])
def test_a_layer_that_cannot_be_cut_exactly_says_why(model: nn.Module, layer: str,
                                                     why: str) -> None:
    assert split_at(model.eval(), layer) == (None, why)


def test_a_model_fx_cannot_trace_names_the_error() -> None:
    split, why = split_at(Branching().eval(), "act")
    assert split is None
    assert why.startswith("torch.fx cannot trace the model (TraceError: "), why
