"""Heads through a split before the attention (``core/scan/heads.py``): the engine for
attention whose heads cannot be reached from the output projection on, here a
sequence-first ``nn.MultiheadAttention``. It must equal weight surgery on ``out_proj``
(the test's own oracle), and every refusal must say why.

The engine's clock (is a head's suffix pass cheaper than a whole forward?) is switched
off where the test is about the numbers, so that the engine runs on any machine.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import pytest_unitablate.core.scan.heads as heads_engine
from pytest_unitablate import scan
from pytest_unitablate.core.heads import head_means
from pytest_unitablate.core.scan.heads import cut_before, split_for_heads


class SeqFirst(nn.Module):
    """A pre-norm encoder whose attention runs sequence-first, (T, N, D)."""

    def __init__(self, depth: int = 2, dim: int = 16, heads: int = 4, pos: bool = False,
                 in_place: bool = False, as_tuple: bool = False) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        # a learned position table used as a bare parameter (a get_attr in the graph)
        self.pos = nn.Parameter(torch.randn(5, 1, dim) * 0.1) if pos else None
        self.in_place, self.as_tuple = in_place, as_tuple
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, heads) for _ in range(depth))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                               nn.Linear(2 * dim, dim)) for _ in range(depth))
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> Any:
        h = self.embed(x).transpose(0, 1)
        if self.pos is not None:
            h = h + self.pos
        for norm, attn, mlp in zip(self.norms, self.attn, self.mlp, strict=True):
            y = norm(h)
            if self.in_place:  # the suffix writes into what the prefix produced
                h = h.add_(attn(y, y, y, need_weights=False)[0])
            else:
                h = h + attn(y, y, y, need_weights=False)[0]
            h = h + mlp(h)
        logits = self.head(h.mean(dim=0))
        return (h, logits) if self.as_tuple else logits


def _surgery(model: SeqFirst, block: int, heads: tuple[int, ...], value: torch.Tensor
             ) -> SeqFirst:
    """The oracle: the heads' columns of ``out_proj`` zeroed, their replacement value
    pushed through those columns into the bias."""
    cut = copy.deepcopy(model)
    proj = cut.attn[block].out_proj
    with torch.no_grad():
        for h in heads:
            part = slice(h * 4, (h + 1) * 4)
            proj.bias += proj.weight[:, part] @ value[part]
            proj.weight[:, part] = 0
    return cut


@pytest.fixture
def no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heads_engine, "slower_than_naive", lambda *args: False)


@settings(deadline=None, max_examples=15, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_heads_behind_a_split_equal_weight_surgery(no_clock: None, data: Any) -> None:
    torch.manual_seed(data.draw(st.integers(0, 10_000)))
    as_tuple = data.draw(st.booleans())
    model = SeqFirst(depth=data.draw(st.integers(2, 3)), pos=data.draw(st.booleans()),
                     in_place=data.draw(st.booleans()), as_tuple=as_tuple).eval()
    output = {"output": 1} if as_tuple else {}
    block = len(model.attn) - 1
    n = data.draw(st.integers(3, 14))
    x, y = torch.randn(n, 5, 6), torch.randint(0, 4, (n,))
    head = st.integers(0, 3)
    rows = data.draw(st.lists(st.one_of(head, st.lists(head, min_size=1, max_size=4,
                                                       unique=True).map(tuple)),
                              min_size=1, max_size=4))
    ablation = data.draw(st.sampled_from(["zero", "mean", 0.3]))
    layer = f"attn.{block}"
    result = scan(model, (x, y), layer, unit="head", units=rows, ablation=ablation,
                  batch_size=data.draw(st.integers(1, 8)), progress=False, **output)
    assert result.method == "prefix", result.reason
    assert result.plan == ("1 head per suffix pass (heads are ablated inside the "
                           "attention), the network before it once per batch")
    value = {"zero": torch.zeros(16), "mean": head_means(model, (x, y), layer)}.get(
        str(ablation), torch.full((16,), 0.3))
    def logits(net: nn.Module) -> torch.Tensor:
        out = net(x)
        return out[1] if as_tuple else out  # type: ignore[no-any-return]

    with torch.no_grad():
        expected = [torch.log_softmax(logits(_surgery(model, block, r if isinstance(r, tuple)
                                                      else (r,), value)), 1) for r in rows]
    for i, lp in enumerate(expected):
        top2 = torch.topk(lp, 2, dim=1).values
        stable = (top2[:, 0] - top2[:, 1] > 1e-4).numpy()
        assert np.array_equal(result.predictions[i][stable], lp.argmax(1).numpy()[stable])
        assert np.allclose(result.logprobs[i], lp[torch.arange(n), y].numpy(), atol=1e-4)
    with torch.no_grad():
        plain = torch.log_softmax(logits(model), 1)
    assert np.array_equal(result.baseline.labels, y.numpy())
    assert result.baseline.logprob is not None
    assert np.allclose(result.baseline.logprob, plain[torch.arange(n), y].numpy(), atol=1e-4)


def test_the_first_block_has_too_little_before_it(no_clock: None) -> None:
    torch.manual_seed(0)
    model = SeqFirst().eval()
    split, why = split_for_heads(model, "attn.0")
    assert split is None
    assert why == ("the network before 'attn.0' holds 144 of the 4564 parameters the "
                   "forward uses: running it once would save little")
    x, y = torch.randn(6, 5, 6), torch.randint(0, 4, (6,))
    result = scan(model, (x, y), "attn.0", unit="head", units=[1], progress=False)
    assert result.method == "naive" and result.reason == f"heads: {why}"
    split, why = split_for_heads(model, "attn.1")
    assert split is not None and why == ""
    # a bare parameter before the attention counts too (once, however often it is read)
    torch.manual_seed(0)
    assert split_for_heads(SeqFirst(pos=True).eval(), "attn.0")[1] == (
        "the network before 'attn.0' holds 224 of the 4644 parameters the forward uses: "
        "running it once would save little")


def test_a_slower_split_and_a_wrong_one_go_to_the_naive_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    model = SeqFirst().eval()
    x, y = torch.randn(10, 5, 6), torch.randint(0, 4, (10,))
    naive = scan(model, (x, y), "attn.1", unit="head", units=[0, 2], method="naive",
                 progress=False)
    monkeypatch.setattr(heads_engine, "slower_than_naive", lambda *args: True)
    slower = scan(model, (x, y), "attn.1", unit="head", units=[0, 2], progress=False)
    assert slower.method == "naive"
    assert slower.reason.startswith("heads: measured on the first batch, a head's suffix "
                                    "pass costs ")
    assert " ms against " in slower.reason and slower.reason.endswith(
        " ms for a whole forward (the naive loop)")
    monkeypatch.setattr(heads_engine, "slower_than_naive", lambda *args: False)
    monkeypatch.setattr(heads_engine, "matches_real", lambda *args, **kw: False)
    wrong = scan(model, (x, y), "attn.1", unit="head", units=[0, 2], progress=False)
    assert (wrong.method, wrong.reason) == (
        "naive", "heads: the split network did not match a real ablated forward")
    for got in (slower, wrong):
        assert np.array_equal(got.predictions, naive.predictions)


class ByKeyword(SeqFirst):
    """The attention called with keywords only (``query=``, ``key=``, ``value=``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(0, 1)
        for norm, attn, mlp in zip(self.norms, self.attn, self.mlp, strict=True):
            y = norm(h)
            h = h + attn(query=y, key=y, value=y, need_weights=False)[0]
            h = h + mlp(h)
        return self.head(h.mean(dim=0))  # type: ignore[no-any-return]


def test_an_attention_called_by_keyword_is_cut_before_its_query(no_clock: None) -> None:
    torch.manual_seed(4)
    model = ByKeyword().eval()
    assert cut_before(model, "attn.1") == ("norms.1", "")
    x, y = torch.randn(9, 5, 6), torch.randint(0, 4, (9,))
    naive = scan(model, (x, y), "attn.1", unit="head", units=[1, 2], method="naive",
                 progress=False)
    split = scan(model, (x, y), "attn.1", unit="head", units=[1, 2], progress=False)
    assert split.method == "prefix", split.reason
    assert np.array_equal(split.predictions, naive.predictions)


class InputFirst(nn.Module):
    """The attention reads the model's input directly: nothing before it to run once."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(6, 2)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(0, 1)
        return self.head(self.attn(x, x, x)[0].mean(0))  # type: ignore[no-any-return]


class Twice(SeqFirst):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norms[0](self.embed(x).transpose(0, 1))
        h = self.attn[0](h, h, h)[0]
        return self.head(self.attn[0](h, h, h)[0].mean(0))  # type: ignore[no-any-return]


class Branchy(SeqFirst):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # Python control flow on the data: torch.fx cannot trace it
            x = -x
        return super().forward(x)


def test_where_no_cut_before_the_attention_exists_it_says_why() -> None:
    assert cut_before(InputFirst(), "attn") == (
        None, "the input of 'attn' is not a module's output (nothing before the attention "
              "to run once)")
    assert cut_before(Twice(), "attn.0") == (None, "torch.fx sees 2 calls of 'attn.0'")
    before, why = cut_before(Branchy(), "attn.1")
    assert before is None and why.startswith("torch.fx cannot trace the model (TraceError: ")
    assert cut_before(SeqFirst(), "attn.1") == ("norms.1", "")


class _Clock:
    """``time`` for the engine: each reading is one millisecond after the last."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1e-3
        return self.now


def test_the_first_head_pass_is_timed_against_a_whole_forward(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a clock that reads 1 ms later each time, the first batch's prefix takes 1 ms, a
    whole forward (prefix and suffix) 2 ms and a head's suffix pass 1 ms: one head costs
    1 + 1 = 2 ms by the split against 0.9 * 2 ms by the naive loop (refused), two heads
    1 + 2 * 1 = 3 ms against 0.9 * 4 ms (taken)."""
    torch.manual_seed(1)
    model = SeqFirst().eval()
    x, y = torch.randn(10, 5, 6), torch.randint(0, 4, (10,))
    monkeypatch.setattr(heads_engine, "time", _Clock())
    one = scan(model, (x, y), "attn.1", unit="head", units=[2], progress=False)
    assert (one.method, one.reason) == (
        "naive", "heads: measured on the first batch, a head's suffix pass costs 2.00 ms "
                 "against 2.00 ms for a whole forward (the naive loop)")
    monkeypatch.setattr(heads_engine, "time", _Clock())
    two = scan(model, (x, y), "attn.1", unit="head", units=[0, 2], progress=False)
    assert two.method == "prefix", two.reason


def test_the_split_is_checked_on_the_first_and_last_head_of_the_first_batch(
        no_clock: None, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(2)
    model = SeqFirst().eval()
    x, y = torch.randn(10, 5, 6), torch.randint(0, 4, (10,))
    checked: list[tuple[int, tuple[int, ...]]] = []
    real = heads_engine.matches_real

    def spy(net: nn.Module, inputs: torch.Tensor, layer: str, variant: tuple[int, ...],
            *args: Any, **kwargs: Any) -> bool:
        checked.append((int(inputs.shape[0]), variant))
        return real(net, inputs, layer, variant, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(heads_engine, "matches_real", spy)
    naive = scan(model, (x, y), "attn.1", unit="head", units=[0, 1, 3], method="naive",
                 batch_size=4, progress=False)
    split = scan(model, (x, y), "attn.1", unit="head", units=[0, 1, 3], batch_size=4,
                 progress=False)
    assert split.method == "prefix", split.reason
    assert checked == [(4, (0,)), (4, (3,))]
    assert np.array_equal(split.predictions, naive.predictions)
    assert split.baseline.fingerprint == naive.baseline.fingerprint != ""


def test_the_engine_reports_progress_per_batch_and_head(no_clock: None) -> None:
    torch.manual_seed(3)
    model = SeqFirst().eval()
    x, y = torch.randn(10, 5, 6), torch.randint(0, 4, (10,))
    split, _ = split_for_heads(model, "attn.1")
    assert split is not None
    steps: list[int] = []
    out = heads_engine.scan_heads(model, split, (x, y), "attn.1", ((0,), (1, 2)), "zero",
                                  None, torch.device("cpu"), 4, progress=steps.append)
    assert not isinstance(out, str)
    assert steps == [4, 4, 4, 4, 2, 2]  # per batch of 4, 4 and 2, one step per head set
    assert out.predictions.shape == (2, 10)


class Shared(SeqFirst):
    """A position table held by a submodule (a dotted ``get_attr``) and one MLP called
    twice before the attention: each parameter counts once."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Module()
        self.table.pos = nn.Parameter(torch.randn(5, 1, 16) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(0, 1) + self.table.pos
        h = self.mlp[0](self.mlp[0](h))
        y = self.norms[1](h)
        h = h + self.attn[1](y, y, y, need_weights=False)[0]
        return self.head(self.mlp[1](h).mean(dim=0))  # type: ignore[no-any-return]


def test_the_parameter_count_reads_dotted_attributes_and_counts_each_once() -> None:
    model = Shared()
    split, why = split_for_heads(model, "attn.1")
    before = [model.embed, model.mlp[0], model.norms[1]]
    prefix = sum(p.numel() for m in before for p in m.parameters()) + model.table.pos.numel()
    after = [model.attn[1], model.mlp[1], model.head]
    suffix = sum(p.numel() for m in after for p in m.parameters())
    assert split is not None and why == ""
    assert heads_engine._parameters(split.prefix) == prefix
    assert heads_engine._parameters(split.suffix) == suffix
