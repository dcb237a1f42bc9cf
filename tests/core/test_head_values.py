"""The heads' mean (``mean`` ablation) and per-example values (``resample``) of a layer:
over several batches, with the head count given when the model does not state it, and
the refusals (a layer the data never reaches, torchvision's windowed heads). The oracle
is the test's own forward pre-hook on the output projection."""

from __future__ import annotations

import pytest
import torch
from attention_models import QuietNet
from numerics import assert_f32_close
from torch import nn

from pytest_unitablate.core.heads import head_means, head_values
from pytest_unitablate.errors import ConfigError, UnsupportedModelError


def _oracle(model: QuietNet, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = model.attn.o_proj.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]  # (batch, tokens, heads * head size)


def test_means_and_values_span_every_batch() -> None:
    torch.manual_seed(0)
    model = QuietNet().eval()
    x, y = torch.randn(10, 4, 3), torch.randint(0, 4, (10,))
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)]  # 4, 4 and 2
    z = _oracle(model, x)
    means = head_means(model, batches, "attn.o_proj", num_heads=2)
    assert means.shape == (8,)
    assert_f32_close(means, z.reshape(-1, 8).double().mean(dim=0), terms=40, depth=3)
    values = head_values(model, batches, "attn.o_proj", num_heads=2)
    assert values.shape == (10, 4, 8)
    assert_f32_close(values, z, terms=8, depth=3)


def test_a_layer_without_a_count_or_a_run_is_refused_by_name() -> None:
    model = QuietNet().eval()
    data = [(torch.randn(2, 4, 3), torch.tensor([0, 1]))]
    with pytest.raises(UnsupportedModelError, match="add num_heads: to the check"):
        head_means(model, data, "attn.o_proj")
    with pytest.raises(UnsupportedModelError, match="add num_heads: to the check"):
        head_values(model, data, "attn.o_proj")
    with pytest.raises(UnsupportedModelError) as raised:
        head_means(model, data, "unused.o_proj", num_heads=2)
    assert str(raised.value) == "layer 'unused.o_proj' never ran on the data"
    with pytest.raises(UnsupportedModelError) as raised:
        head_values(model, data, "unused.o_proj", num_heads=2)
    assert str(raised.value) == "layer 'unused.o_proj' never ran on the reference data"


def test_windowed_heads_cannot_be_resampled() -> None:
    swin = pytest.importorskip(  # a test extra: the CPU-only torch 2.13 build cannot
        "torchvision.models.swin_transformer",  # import it; CI installs one that can
        reason="torchvision (a test extra) does not import with this torch build")
    model = nn.Sequential()
    model.add_module("attn", swin.ShiftedWindowAttention(8, [2, 2], [0, 0], num_heads=2))
    with pytest.raises(ConfigError) as raised:
        head_values(model, [(torch.randn(1, 4, 4, 8), torch.tensor([0]))], "attn")
    assert str(raised.value) == (
        "resample ablation of the heads of 'attn': torchvision's ShiftedWindowAttention "
        "computes them per window, not per example; use zero or mean")


class _Projection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.o_proj = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(x)  # type: ignore[no-any-return]


class _Passthrough(nn.Module):
    """The heads' concatenated output is the input itself: the test sets every value."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = _Projection()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x).mean(1)  # type: ignore[no-any-return]


def test_means_are_summed_in_float64() -> None:
    """Two batches of one example at two positions: 2**24 and 1, then -2**24 and 1. Each
    batch's sum is one addition, so no order of summation changes it: in float32,
    2**24 + 1 rounds to 2**24 and the mean comes out 1/4; the float64 sums keep every 1,
    a mean of 2/4 per feature."""
    top = float(2**24)
    data = [(torch.tensor([[[top] * 4, [1.0] * 4]]), torch.tensor([0])),
            (torch.tensor([[[-top] * 4, [1.0] * 4]]), torch.tensor([1]))]
    means = head_means(_Passthrough().eval(), data, "attn.o_proj", num_heads=2)
    assert means.dtype == torch.float32
    assert_f32_close(means, torch.full((4,), 0.5), terms=4)
