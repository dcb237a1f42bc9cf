"""Attention modules written the way libraries write them, for the tests that need heads
without the libraries: a Hugging Face-style q/k/v/o module and a TransformerLens-style one
whose ``hook_z`` has a head axis (shared by ``core/test_bound_engines.py`` and the
differential fuzzer)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class HookPoint(nn.Module):
    """A TransformerLens-style hook point (identity): the class name is what names it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class HFAttention(nn.Module):
    """q/k/v/o projections, heads concatenated before ``o_proj`` (Hugging Face style)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.o_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.num_heads
        q, k, v = (p(x).view(b, t, h, d // h).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // h) ** 0.5, dim=-1) @ v
        return self.o_proj(att.transpose(1, 2).reshape(b, t, d))  # type: ignore[no-any-return]


class QuietAttention(HFAttention):
    """HF-style attention that does not say how many heads it has (2 of size 4): only a
    spec's ``num_heads:`` can."""

    def __init__(self) -> None:
        super().__init__(8, 2)
        del self.num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.num_heads = 2
        try:
            return super().forward(x)
        finally:
            del self.num_heads


class QuietNet(nn.Module):
    """(batch, tokens, 3) -> 4 logits through one :class:`QuietAttention` (``attn``) and
    another the forward never calls (``unused``)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = QuietAttention()
        self.unused = QuietAttention()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head((h + self.attn(h)).mean(dim=1))  # type: ignore[no-any-return]


class TLAttention(nn.Module):
    """TransformerLens-style: ``hook_z`` (batch, position, head, d_head), then ``W_O``
    (``bias``: the scale of a random ``b_O``; 0 for none)."""

    def __init__(self, dim: int, heads: int, bias: float = 0.0) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(n_heads=heads, d_head=dim // heads)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.hook_z = HookPoint()
        self.W_O = nn.Parameter(torch.randn(heads, dim // heads, dim) / dim ** 0.5)
        self.b_O = nn.Parameter(torch.randn(dim) * bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.cfg.n_heads
        q, k, v = self.qkv(x).view(b, t, 3, h, d // h).unbind(2)  # (b, t, h, dh) each
        att = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / (d // h) ** 0.5, -1)
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", att, v))
        return torch.einsum("bqhd,hdm->bqm", z, self.W_O) + self.b_O


__all__ = ["HFAttention", "HookPoint", "QuietAttention", "QuietNet", "TLAttention"]
