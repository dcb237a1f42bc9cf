"""Resample ablation against an independent loop, for channels, token neurons and heads.

The independent side re-implements the documented draw with numpy and replaces the units
with a plain forward hook (channels, neurons) or by hand inside the attention (heads).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_unitablate import scan
from pytest_unitablate.core.heads import head_values
from pytest_unitablate.core.resample import ResampleSource, layer_values, resample_index


def _draw(n: int, r: int, draw: int, seed: int, same: bool) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64([seed, draw]))
    if same:
        j = rng.integers(0, r - 1, size=n)
        return j + (j >= np.arange(n))
    return rng.integers(0, r, size=n)


class Tokens(nn.Module):
    """N,T,C token features (channel_dim -1) and an attention layer over them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(self.embed(x))
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head((h + a).mean(1))


def _conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Conv2d(5, 6, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()


def _logp(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        logits = model(x)
    return torch.log_softmax(logits.double(), 1)[torch.arange(len(y)), y].numpy()


def _hooked(model: nn.Module, layer: nn.Module, x: torch.Tensor, y: torch.Tensor,
            replace: Any) -> np.ndarray:
    handle = layer.register_forward_hook(lambda _m, _a, out: replace(out))
    try:
        return _logp(model, x, y)
    finally:
        handle.remove()


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(["channels", "neurons", "heads"]), seed=st.integers(0, 99),
       draws=st.integers(1, 3), same=st.booleans(), batch=st.integers(3, 11),
       first=st.integers(0, 1))
def test_resample_equals_an_independent_loop(kind: str, seed: int, draws: int, same: bool,
                                             batch: int, first: int) -> None:
    torch.manual_seed(seed)
    n, r = 17, 9
    if kind == "channels":
        model, layer, units, dim = _conv(), "1", [first, 3], 1
        x, ref = torch.randn(n, 2, 7, 7), torch.randn(r, 2, 7, 7)
    else:
        model, layer, units, dim = Tokens().eval(), ("mlp" if kind == "neurons" else "attn"), \
            [first + 4] if kind == "neurons" else [first], -1
        x, ref = torch.randn(n, 5, 3), torch.randn(r, 5, 3)
    y = torch.randint(0, 4, (n,))
    reference = (x, y) if same else (ref, torch.zeros(r, dtype=torch.long))
    rows = n if same else r
    if kind == "heads":
        values = head_values(model, reference, layer)
    else:
        values = layer_values(model, reference, layer)
    sources = [ResampleSource(values, resample_index(n, rows, draw=d, seed=seed,
                                                     same_data=same)) for d in range(draws)]
    got = scan(model, (x, y), layer, units=[tuple(units)], ablation="resample",
               resample=sources, batch_size=batch, progress=False,
               unit="head" if kind == "heads" else "channel",
               channel_dim=dim if kind == "neurons" else 1)
    expected = []
    for d in range(draws):
        j = torch.as_tensor(_draw(n, rows, d, seed, same))
        assert np.array_equal(j.numpy(), sources[d].index)
        if kind == "heads":
            mha = model.attn
            weight, bias = mha.out_proj.weight.detach().clone(), mha.out_proj.bias.detach()

            def heads_of(inp: torch.Tensor, mha: Any = mha) -> torch.Tensor:
                with torch.no_grad():
                    h = model.mlp(model.embed(inp))
                    w = mha.out_proj.weight.detach().clone()
                    b = mha.out_proj.bias.detach().clone()
                    mha.out_proj.weight.copy_(torch.eye(8))
                    mha.out_proj.bias.zero_()
                    try:
                        cat, _ = mha(h, h, h, need_weights=False)
                    finally:
                        mha.out_proj.weight.copy_(w)
                        mha.out_proj.bias.copy_(b)
                return cat

            cat, ref_cat = heads_of(x), heads_of(reference[0])
            s = slice(units[0] * 4, units[0] * 4 + 4)
            cat[:, :, s] = ref_cat[j][:, :, s]
            with torch.no_grad():
                h = model.mlp(model.embed(x))
                logits = model.head((h + cat @ weight.T + bias).mean(1))
            expected.append(torch.log_softmax(logits.double(), 1)[torch.arange(n), y].numpy())
        else:
            module = dict(model.named_modules())[layer]
            with torch.no_grad():
                captured: list[torch.Tensor] = []
                handle = module.register_forward_hook(
                    lambda _m, _a, out, kept=captured: kept.append(out.clone()))
                model(reference[0])
                handle.remove()
            ref_out = captured[0]

            def replace(out: torch.Tensor, j: torch.Tensor = j,
                        ref_out: torch.Tensor = ref_out) -> torch.Tensor:
                out = out.clone()
                if kind == "channels":
                    out[:, units] = ref_out[j][:, units]
                else:
                    out[..., units] = ref_out[j][..., units]
                return out

            expected.append(_hooked(model, module, x, y, replace))
    assert got.logprobs is not None
    np.testing.assert_allclose(got.logprobs[0], np.mean(expected, axis=0), atol=2e-5)
