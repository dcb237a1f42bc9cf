"""Heads from the output projection on (``core/scan/head_copies.py``) where the layer's
output is a tuple the network reads on (``nn.MultiheadAttention`` with its attention
weights) and where the projection is not square (heads * head size != model width, as in
Gemma). The engine's rows must equal the naive loop's (real forwards with a hook)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import pytest_unitablate.core.scan.suffix as suffix_engine
from pytest_unitablate import scan


@pytest.fixture(autouse=True)
def no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine is taken whatever this machine's clock says of it."""
    monkeypatch.setattr(suffix_engine, "slower_than_naive", lambda *args: False)


class ReadsWeights(nn.Module):
    """Two batch-first MHA blocks; the logits also read block 1's averaged attention
    weights (batch, query, key), the second element of the layer's tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = nn.ModuleList(nn.MultiheadAttention(16, 4, batch_first=True)
                                  for _ in range(2))
        self.head = nn.Linear(16, 4)
        self.scale = nn.Parameter(torch.tensor([3.0, -2.0, 1.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn[0](h, h, h, need_weights=False)[0]
        out, weights = self.attn[1](h, h, h, need_weights=True)
        h = h + out
        extra = weights[:, :, 0].sum(dim=-1)  # attention paid to the first token
        return self.head(h.mean(dim=1)) + extra[:, None] * self.scale  # type: ignore[no-any-return]


class WideHeads(nn.Module):
    """Hugging Face-style attention with 4 heads of size 6 (24 wide) projected to 16."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 4
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(16, 24) for _ in range(3))
        self.o_proj = nn.Linear(24, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, 4, 6).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        att = torch.softmax(q @ k.transpose(-1, -2) / 6 ** 0.5, dim=-1) @ v
        return self.o_proj(att.transpose(1, 2).reshape(b, t, 24))  # type: ignore[no-any-return]


class Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = nn.ModuleList(WideHeads() for _ in range(2))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for attn in self.attn:
            h = h + attn(h)
        return self.head(h.mean(dim=1))  # type: ignore[no-any-return]


@pytest.mark.parametrize(("model", "layer"), [(ReadsWeights, "attn.1"),
                                              (Wide, "attn.1.o_proj")])
@pytest.mark.parametrize("ablation", ["zero", "mean", 0.3])
def test_the_projection_engine_gives_the_naive_rows(model: type[nn.Module], layer: str,
                                                    ablation: str | float) -> None:
    torch.manual_seed(5)
    net = model().eval()
    x, y = torch.randn(9, 5, 6), torch.randint(0, 4, (9,))  # 9 examples, 5 tokens
    rows = [0, (1, 3), 2, (0, 1, 2, 3)]
    naive = scan(net, (x, y), layer, unit="head", units=rows, method="naive",
                 ablation=ablation, batch_size=4, progress=False)
    fast = scan(net, (x, y), layer, unit="head", units=rows, ablation=ablation,
                batch_size=4, progress=False)
    assert fast.method == "prefix", fast.reason
    assert fast.plan.startswith("heads from the output projection on")
    assert np.array_equal(fast.predictions, naive.predictions)
    assert fast.logprobs is not None and naive.logprobs is not None
    assert np.allclose(fast.logprobs, naive.logprobs, atol=1e-4)
