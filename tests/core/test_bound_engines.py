"""The engines that work at the bound equal an independent oracle on generated networks.

* the closed form through per-channel layers: a convolution, then any chain of batch
  norm, an activation, max or average pooling, flatten and a Linear. The oracle is a
  forward hook of the test's own that sets the channel (dimension 1) to the replacement;
* heads from the output projection on, for ``nn.MultiheadAttention`` (batch-first), a
  Hugging Face-style attention whose ``o_proj`` is a Linear, and a TransformerLens-style
  ``hook_z`` with a head axis. The oracle is weight surgery: the projection's columns of
  the head zeroed and ``r_h @ W_h.T`` added to its bias.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from attention_models import HFAttention, TLAttention
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_unitablate import scan
from pytest_unitablate.core.ablation import channel_means
from pytest_unitablate.core.heads import head_means

ACTIVATIONS = [nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Hardswish]


class ConvNet(nn.Module):
    def __init__(self, width: int, chain: list[nn.Module], pooled: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, width, 3, padding=1)
        self.chain = nn.Sequential(*chain)
        self.fc = nn.Linear(width * pooled, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.chain(self.conv(torch.relu(self.stem(x)))), 1))


def _hooked(model: nn.Module, layer: str, units: tuple[int, ...], value: torch.Tensor
            ) -> Any:
    """The oracle's own hook: channels ``units`` of ``layer`` (dimension 1) set to
    ``value[unit]``."""
    def hook(m: nn.Module, a: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        for u in units:
            out[:, u] = value[u]
        return out
    return dict(model.named_modules())[layer].register_forward_hook(hook)


def _logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(x), 1)


def _agree(result: Any, rows: list[torch.Tensor], y: torch.Tensor) -> None:
    """Predictions equal where the oracle's top two logits are not a near-tie; log p(true)
    equal to float32 accuracy."""
    for i, lp in enumerate(rows):
        top2 = torch.topk(lp, 2, dim=1).values
        stable = (top2[:, 0] - top2[:, 1] > 1e-4).numpy()
        assert np.array_equal(result.predictions[i][stable], lp.argmax(1).numpy()[stable])
        expected = lp[torch.arange(len(y)), y].numpy()
        assert np.allclose(result.logprobs[i], expected, atol=1e-4), i


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_closed_form_through_per_channel_layers_equals_a_hook_of_our_own(data: Any
                                                                             ) -> None:
    torch.manual_seed(data.draw(st.integers(0, 10_000)))
    width = data.draw(st.integers(2, 6))
    chain: list[nn.Module] = []
    if data.draw(st.booleans()):
        bn = nn.BatchNorm2d(width)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        chain.append(bn)
    chain.append(data.draw(st.sampled_from(ACTIVATIONS))())
    if data.draw(st.booleans()):
        chain.append(data.draw(st.sampled_from([nn.MaxPool2d(2), nn.AvgPool2d(2)])))
    pooled = data.draw(st.sampled_from([1, 2]))
    chain.append(nn.AdaptiveAvgPool2d(pooled) if data.draw(st.booleans())
                 else nn.AdaptiveMaxPool2d(pooled))
    model = ConvNet(width, chain, pooled * pooled).eval()
    n = data.draw(st.integers(3, 20))
    x, y = torch.randn(n, 1, 8, 8), torch.randint(0, 5, (n,))
    unit = st.integers(0, width - 1)
    rows = data.draw(st.lists(st.one_of(unit, st.lists(unit, min_size=1, max_size=width,
                                                       unique=True).map(tuple)),
                              min_size=1, max_size=5))
    ablation = data.draw(st.sampled_from(["zero", "mean", -0.4, 0.7]))
    result = scan(model, (x, y), "conv", units=rows, ablation=ablation,
                  batch_size=data.draw(st.integers(1, 8)), progress=False)
    assert result.method == "closed_form", result.reason
    if ablation == "zero":
        value = torch.zeros(width)
    elif ablation == "mean":
        value = channel_means(model, (x, y), ["conv"])["conv"]
    else:
        value = torch.full((width,), float(ablation))
    oracle = []
    for r in rows:
        handle = _hooked(model, "conv", r if isinstance(r, tuple) else (r,), value)
        try:
            oracle.append(_logprobs(model, x, y))
        finally:
            handle.remove()
    _agree(result, oracle, y)


class Encoder(nn.Module):
    """Embedding, ``depth`` pre-norm blocks of one attention kind, mean pooling, a head."""

    def __init__(self, kind: str, depth: int, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        if kind == "mha":
            self.attn = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=True)
                                      for _ in range(depth))
        elif kind == "hf":
            self.attn = nn.ModuleList(HFAttention(dim, heads) for _ in range(depth))
        else:
            self.attn = nn.ModuleList(TLAttention(dim, heads, bias=0.1)
                                      for _ in range(depth))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                               nn.Linear(2 * dim, dim)) for _ in range(depth))
        self.kind = kind
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for norm, attn, mlp in zip(self.norms, self.attn, self.mlp, strict=True):
            y = norm(h)
            out = attn(y, y, y, need_weights=False)[0] if self.kind == "mha" else attn(y)
            h = h + out
            h = h + mlp(h)
        return self.head(h.mean(dim=1))  # type: ignore[no-any-return]


def _projection(model: Encoder, block: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The projection's weight as (out, heads * head_dim), its bias, and the head layer."""
    attn = model.attn[block]
    if model.kind == "mha":
        return attn.out_proj.weight, attn.out_proj.bias, f"attn.{block}"
    if model.kind == "hf":
        return attn.o_proj.weight, attn.o_proj.bias, f"attn.{block}.o_proj"
    return attn.W_O, attn.b_O, f"attn.{block}.hook_z"


def _surgery(model: Encoder, block: int, heads: tuple[int, ...], value: torch.Tensor
             ) -> Encoder:
    """The oracle: head outputs replaced by ``value`` through the projection's weights."""
    cut = copy.deepcopy(model)
    weight, bias, _ = _projection(cut, block)
    size = 16 // 4
    with torch.no_grad():
        for h in heads:
            part = slice(h * size, (h + 1) * size)
            if cut.kind == "tl":  # W_O: (heads, head_dim, out)
                bias += value[part] @ weight[h]
                weight[h] = 0
            else:  # (out, heads * head_dim)
                bias += weight[:, part] @ value[part]
                weight[:, part] = 0
    return cut


@settings(deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_heads_from_the_projection_on_equal_weight_surgery(data: Any) -> None:
    torch.manual_seed(data.draw(st.integers(0, 10_000)))
    kind = data.draw(st.sampled_from(["mha", "hf", "tl"]))
    depth = data.draw(st.integers(1, 2))
    model = Encoder(kind, depth).eval()
    block = data.draw(st.integers(0, depth - 1))
    n = data.draw(st.integers(3, 16))
    x, y = torch.randn(n, 5, 6), torch.randint(0, 4, (n,))
    head = st.integers(0, 3)
    rows = data.draw(st.lists(st.one_of(head, st.lists(head, min_size=1, max_size=4,
                                                       unique=True).map(tuple)),
                              min_size=1, max_size=5))
    ablation = data.draw(st.sampled_from(["zero", "mean", 0.3]))
    layer = _projection(model, block)[2]
    budget = data.draw(st.sampled_from([None, 3000]))  # a small budget splits batches
    result = scan(model, (x, y), layer, unit="head", units=rows, ablation=ablation,
                  batch_size=data.draw(st.integers(1, 8)), memory_budget=budget,
                  progress=False)
    if result.method != "prefix":  # it may measure itself slower than the naive loop
        assert "measured on the first batch" in result.reason, result.reason
    else:
        assert result.plan.startswith("heads from the output projection on")
    if ablation == "zero":
        value = torch.zeros(16)
    elif ablation == "mean":
        value = head_means(model, (x, y), layer)
    else:
        value = torch.full((16,), 0.3)
    oracle = [_logprobs(_surgery(model, block, r if isinstance(r, tuple) else (r,), value),
                        x, y) for r in rows]
    _agree(result, oracle, y)


@pytest.mark.parametrize("kind", ["mha", "hf", "tl"])
def test_every_head_kind_takes_the_projection_engine(kind: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The structural decision: each kind goes through the engine (with the clock switched
    off), none falls back to the naive loop."""
    import pytest_unitablate.core.scan.suffix as suffix_engine

    monkeypatch.setattr(suffix_engine, "slower_than_naive", lambda *args: False)
    torch.manual_seed(1)
    model = Encoder(kind, 2).eval()
    x, y = torch.randn(12, 5, 6), torch.randint(0, 4, (12,))
    result = scan(model, (x, y), _projection(model, 0)[2], unit="head", progress=False)
    assert result.method == "prefix", result.reason
    assert result.plan.startswith("heads from the output projection on")


class Branching(nn.Module):
    """Python control flow on the data: torch.fx cannot trace it, replay can run it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = HFAttention(16, 4)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if h.shape[1] > 1:  # on the input's shape, read as a Python bool
            h = h + self.attn(h)
        return self.head(h.mean(dim=1))  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["mha", "hf", "tl"])
def test_every_engine_can_be_named_and_gives_the_naive_rows(kind: str) -> None:
    from pytest_unitablate.errors import ConfigError

    torch.manual_seed(2)
    model = Encoder(kind, 2).eval()
    x, y = torch.randn(20, 5, 6), torch.randint(0, 4, (20,))
    layer = _projection(model, 1)[2]
    rows = [0, (1, 2), 3]
    naive = scan(model, (x, y), layer, unit="head", units=rows, method="naive",
                 progress=False)
    for method in ("prefix", "replay", "auto"):
        got = scan(model, (x, y), layer, unit="head", units=rows, method=method,
                   progress=False)
        assert got.method == ("prefix" if method == "auto" else method)
        assert np.array_equal(got.predictions, naive.predictions), method
    with pytest.raises(ConfigError, match="heads have no closed form"):
        scan(model, (x, y), layer, unit="head", method="closed_form", progress=False)


def test_a_named_engine_that_cannot_run_says_why() -> None:
    from pytest_unitablate.errors import ConfigError

    torch.manual_seed(3)
    model = Branching().eval()
    x, y = torch.randn(12, 5, 6), torch.randint(0, 4, (12,))
    with pytest.raises(ConfigError, match=r"method='prefix'.*torch.fx cannot trace"):
        scan(model, (x, y), "attn.o_proj", unit="head", method="prefix", progress=False)
    replayed = scan(model, (x, y), "attn.o_proj", unit="head", method="replay",
                    progress=False)
    naive = scan(model, (x, y), "attn.o_proj", unit="head", method="naive", progress=False)
    assert replayed.method == "replay"
    assert np.array_equal(replayed.predictions, naive.predictions)
    with pytest.raises(ConfigError, match="resample ablation runs the naive loop"):
        scan(model, (x, y), "embed", method="replay", ablation="resample", resample=[object()],
             channel_dim=-1,
             progress=False)


def test_replay_puts_back_a_forward_an_instance_had_of_its_own() -> None:
    """Some wrappers set ``module.forward`` on the instance; replay restores it exactly,
    and leaves no forward of its own behind on the others."""
    torch.manual_seed(5)
    model = Branching().eval()
    original = model.embed.forward
    model.embed.forward = lambda x: original(x) * 1.0  # type: ignore[method-assign]
    patched = model.embed.__dict__["forward"]
    x, y = torch.randn(12, 5, 6), torch.randint(0, 4, (12,))
    scan(model, (x, y), "attn.o_proj", unit="head", method="replay", progress=False)
    assert model.embed.__dict__["forward"] is patched
    assert all("forward" not in m.__dict__ for name, m in model.named_modules()
               if name != "embed")
