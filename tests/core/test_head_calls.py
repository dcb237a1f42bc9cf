"""Heads whose projection is never called as a module: ``nn.MultiheadAttention`` (inside
``F.multi_head_attention_forward``, here with a key padding mask and a projection bias)
and torchvision's ``ShiftedWindowAttention`` (an ``F.linear`` on the projection's weight).
Each ablation must equal weight surgery on the projection: the head's columns zeroed, the
replacement value pushed through them into the bias (the test's oracle)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from numerics import assert_f32_close
from torch import nn

from pytest_unitablate import scan


def _surgery(model: nn.Module, proj: str, heads: tuple[int, ...], size: int,
             value: float) -> nn.Module:
    cut = copy.deepcopy(model)
    linear = cut.get_submodule(proj)
    with torch.no_grad():
        for h in heads:
            part = slice(h * size, (h + 1) * size)
            linear.bias += linear.weight[:, part].sum(dim=1) * value
            linear.weight[:, part] = 0
    return cut


def _logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray[Any, Any]:
    with torch.no_grad():
        return torch.log_softmax(model(x), 1)[torch.arange(len(y)), y].numpy()


class Masked(nn.Module):
    """Batch-first MHA with a key padding mask read from the input (the first token is
    never masked) and a projection bias that is not zero."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 12)
        self.attn = nn.MultiheadAttention(12, 3, batch_first=True)
        with torch.no_grad():
            self.attn.out_proj.bias.normal_()
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = x[:, :, 0] > 0.5
        mask[:, 0] = False
        h = self.embed(x)
        out = self.attn(h, h, h, key_padding_mask=mask, need_weights=False)[0]
        return self.head((h + out).mean(dim=1))  # type: ignore[no-any-return]


class Windowed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        swin = pytest.importorskip(  # a test extra: the CPU-only torch 2.13 build cannot
            "torchvision.models.swin_transformer",  # import it; CI installs one that can
            reason="torchvision (a test extra) does not import with this torch build")
        self.attn = swin.ShiftedWindowAttention(8, [2, 2], [1, 1], num_heads=2)
        with torch.no_grad():
            self.attn.proj.bias.normal_()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x).mean(dim=(1, 2)))  # type: ignore[no-any-return]


@pytest.mark.parametrize(("net", "proj", "size", "shape"), [
    (Masked, "attn.out_proj", 4, (12, 5, 3)), (Windowed, "attn.proj", 4, (12, 4, 4, 8))])
@pytest.mark.parametrize("ablation", ["zero", 0.3])
def test_heads_equal_surgery_on_a_projection_called_inside_a_function(
        net: type[nn.Module], proj: str, size: int, shape: tuple[int, ...],
        ablation: str | float) -> None:
    torch.manual_seed(0)
    model = net().eval()
    x, y = torch.randn(*shape), torch.randint(0, 4, (shape[0],))
    rows = [0, (0, 1), 1]
    got = scan(model, (x, y), "attn", unit="head", units=rows, ablation=ablation,
               method="naive", progress=False)
    value = 0.0 if ablation == "zero" else float(ablation)
    assert got.logprobs is not None
    for i, r in enumerate(rows):
        heads = r if isinstance(r, tuple) else (r,)
        expected = _logprobs(_surgery(model, proj, heads, size, value), x, y)
        assert np.allclose(got.logprobs[i], expected, atol=1e-4), (r, ablation)
    assert np.allclose(got.baseline.logprob, _logprobs(model, x, y), atol=1e-5)


def test_heads_of_a_float64_attention_equal_surgery_in_float64() -> None:
    """The identity that stands in for the projection inside
    ``F.multi_head_attention_forward`` takes the weight's dtype: a float64 model's heads
    are ablated in float64 (a float32 identity would raise). The scan keeps log-probs in
    float32."""
    torch.manual_seed(0)
    model = Masked().double().eval()
    x, y = torch.randn(12, 5, 3, dtype=torch.float64), torch.randint(0, 4, (12,))
    got = scan(model, (x, y), "attn", unit="head", units=[1, (0, 2)], method="naive",
               progress=False)
    assert got.logprobs is not None
    for i, heads in enumerate([(1,), (0, 2)]):
        expected = _logprobs(_surgery(model, "attn.out_proj", heads, 4, 0.0), x, y)
        assert_f32_close(got.logprobs[i], expected, terms=1)  # float64, stored as float32


def test_heads_of_an_attention_called_twice_per_forward_are_refused() -> None:
    """The same attention applied twice (weights shared between two blocks): one head is
    two activations, so ablating it is refused as for any layer that runs twice."""
    from attention_models import HFAttention

    from pytest_unitablate import ablate
    from pytest_unitablate.errors import LayerCalledTwiceError

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = HFAttention(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(self.attn(x))

    model = Twice().eval()
    x = torch.randn(2, 5, 8)
    with pytest.raises(LayerCalledTwiceError, match=r"^layer 'attn.o_proj' ran 2 times "), \
            ablate(model, {"attn.o_proj": [1]}, unit="head"):
        model(x)
    once = nn.Sequential()
    once.attn = HFAttention(8, 4)
    with ablate(once.eval(), {"attn.o_proj": [1]}, unit="head"):
        assert once(x).shape == (2, 5, 8)
