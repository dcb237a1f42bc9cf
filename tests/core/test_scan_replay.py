"""The replay engine called directly, against the test's own ablated forwards: what it
replays, which rows of the first batch are plain forwards (the yardstick) and when the
rest go plain, which rows it checks against real ablated forwards, and each refusal.

The clock is the test's, so which path a row takes never depends on this machine's load.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from attention_models import HFAttention
from torch import nn

from pytest_unitablate.core.ablation import ablate
from pytest_unitablate.core.scan import replay
from pytest_unitablate.core.scan.head_copies import head_projection
from pytest_unitablate.core.scan.replay import replayable, scan_replay
from pytest_unitablate.core.tokens import TokenBatch

CPU = torch.device("cpu")


class Net(nn.Module):
    """(N, 6) -> 4 logits: embed, norm, ``mid`` (the ablated layer), act, head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.mid = nn.Linear(8, 8)
        self.act = nn.ReLU()
        self.unused = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.mid(self.norm(self.embed(x)))))  # type: ignore[no-any-return]


class Twice(Net):
    """``mid`` runs twice per forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.act(self.mid(self.embed(x)))))  # type: ignore[no-any-return]


class FeaturesFirst(nn.Linear):
    """A linear layer whose output is (features, batch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).t()


class Transposed(Net):
    """``mid``'s output is (features, batch): not batch first."""

    def __init__(self) -> None:
        super().__init__()
        self.mid = FeaturesFirst(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.mid(self.norm(self.embed(x))).t()))  # type: ignore[no-any-return]


class Tokens(nn.Module):
    """(N, 5, 3) tokens -> 4 logits through an HF-style attention of 2 heads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Linear(3, 8)
        self.attn = HFAttention(8, 2)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head((h + self.attn(h)).mean(dim=1))  # type: ignore[no-any-return]


def data(n: int = 10, shape: tuple[int, ...] = (6,)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 4, (n,), generator=g)


VARIANTS = ((0,), (1,), (2, 3), (4,), (5,), (6, 7))


def oracle(model: nn.Module, x: torch.Tensor, layer: str, variants: Any,
           **kind: Any) -> torch.Tensor:
    """Each row's predictions from a real ablated forward."""
    rows = []
    with torch.no_grad():
        for variant in variants:
            with ablate(model, {layer: list(variant)}, ablation="zero", **kind):
                rows.append(model(x).argmax(dim=1))
    return torch.stack(rows)


class Clock:
    """``perf_counter`` for the replay module: each row reads it twice (start and stop),
    and takes the next of ``durations`` seconds."""

    def __init__(self, durations: Iterator[float]) -> None:
        self.now = 0.0
        self.durations = durations
        self.started = False

    def perf_counter(self) -> float:
        if self.started:
            self.now += next(self.durations)
        self.started = not self.started
        return self.now


def row_durations(replayed: float, plain: float) -> Iterator[float]:
    """The first batch's rows 1 and 3 are plain, the others replayed; then plain."""
    yield from (replayed, plain, replayed, plain)
    while True:
        yield plain


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The units of every plain ablated forward the engine ran itself."""
    calls: list[tuple[int, ...]] = []

    def counting(model: nn.Module, units: dict[str, list[int]], **kw: Any) -> Any:
        calls.append(tuple(next(iter(units.values()))))
        return ablate(model, units, **kw)

    monkeypatch.setattr(replay, "ablate", counting)
    return calls


def run(model: nn.Module, monkeypatch: pytest.MonkeyPatch, replayed: float = 0.001,
        plain: float = 0.002, **kw: Any) -> Any:
    monkeypatch.setattr(replay, "time", Clock(row_durations(replayed, plain)))
    x, y = data()
    return scan_replay(model, (x, y), "mid", VARIANTS, "zero", None, CPU, 4, **kw)


def test_cheaper_replays_equal_real_ablated_forwards(
        monkeypatch: pytest.MonkeyPatch, counted: list[tuple[int, ...]]) -> None:
    model = Net().eval()
    got = run(model, monkeypatch)
    x, _ = data()
    assert torch.equal(torch.from_numpy(got.predictions), oracle(model, x, "mid", VARIANTS))
    assert got.plan == ""
    assert counted == [(1,), (4,)]  # only the yardstick rows 1 and 3 of the first batch
    assert got.logprobs is not None and got.logprobs.dtype.name == "float32"
    assert got.predictions.dtype.name == "int64"


def test_a_replay_no_cheaper_than_a_forward_goes_plain_and_says_so(
        monkeypatch: pytest.MonkeyPatch, counted: list[tuple[int, ...]]) -> None:
    model = Net().eval()
    got = run(model, monkeypatch, replayed=0.002, plain=0.002)
    x, _ = data()
    assert torch.equal(torch.from_numpy(got.predictions), oracle(model, x, "mid", VARIANTS))
    assert got.plan == ("measured on the first batch, a replayed pass costs 2.00 ms against "
                        "2.00 ms for a plain ablated forward: plain forwards from there on")
    # row 0 replayed; from the yardstick row 1 on, every row of every batch is plain
    assert counted == list(VARIANTS[1:]) + list(VARIANTS) * 2


def test_without_the_naive_loop_no_row_is_plain(
        monkeypatch: pytest.MonkeyPatch, counted: list[tuple[int, ...]]) -> None:
    model = Net().eval()
    got = run(model, monkeypatch, replayed=0.003, plain=0.001, allow_naive=False)
    x, _ = data()
    assert torch.equal(torch.from_numpy(got.predictions), oracle(model, x, "mid", VARIANTS))
    assert counted == [] and got.plan == ""


@pytest.mark.parametrize(("count", "plain_rows"), [(2, []), (3, [1]), (4, [1]), (5, [1, 3])])
def test_a_yardstick_row_needs_a_replayed_row_after_it(
        monkeypatch: pytest.MonkeyPatch, counted: list[tuple[int, ...]], count: int,
        plain_rows: list[int]) -> None:
    monkeypatch.setattr(replay, "time", Clock(row_durations(0.001, 0.002)))
    x, y = data()
    scan_replay(Net().eval(), (x, y), "mid", VARIANTS[:count], "zero", None, CPU, 4)
    assert counted == [VARIANTS[row] for row in plain_rows]


def test_the_first_two_replayed_rows_are_checked_against_real_forwards(
        monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[tuple[tuple[int, ...], dict[str, Any]]] = []
    real = replay.matches_real

    def spy(model: nn.Module, inputs: Any, layer: str, variant: tuple[int, ...],
            *args: Any, **kw: Any) -> bool:
        checked.append((variant, kw))
        return real(model, inputs, layer, variant, *args, **kw)

    monkeypatch.setattr(replay, "matches_real", spy)
    run(Net().eval(), monkeypatch)
    assert [variant for variant, _ in checked] == [(0,), (2, 3)]  # rows 0 and 2
    assert checked[0][1]["unit"] == "channel" and checked[0][1]["num_heads"] is None


def test_a_replay_that_differs_from_a_real_forward_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "matches_real", lambda *args, **kw: False)
    assert run(Net().eval(), monkeypatch) == \
        "the replayed pass did not match a real ablated forward"


def test_progress_is_reported_per_row_with_the_batch_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    run(Net().eval(), monkeypatch, progress=seen.append)
    assert seen == [4] * 6 + [4] * 6 + [2] * 6


def test_heads_are_replayed_through_their_projection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "time", Clock(row_durations(0.001, 0.002)))
    checked: list[dict[str, Any]] = []
    real = replay.matches_real

    def spy(*args: Any, **kw: Any) -> bool:
        checked.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(replay, "matches_real", spy)
    model = Tokens().eval()
    x, y = data(shape=(5, 3))
    heads = head_projection(model, "attn.o_proj")
    assert heads is not None
    variants = ((0,), (1,), (0, 1), (1,), (0,))
    got = scan_replay(model, (x, y), "attn.o_proj", variants, "zero", None, CPU, 4,
                      heads=heads)
    assert not isinstance(got, str)
    assert torch.equal(torch.from_numpy(got.predictions),
                       oracle(model, x, "attn.o_proj", variants, unit="head", num_heads=2))
    assert [kw["unit"] for kw in checked] == ["head", "head"]
    assert [kw["num_heads"] for kw in checked] == [2, 2]


@pytest.mark.parametrize(("model", "layer", "why"), [
    (Twice(), "mid", "'mid' is called 2 times per forward"),
    (Net(), "unused", "'unused' is called 0 times per forward"),
    (Net(), "embed", "nothing before 'embed' can be replayed (no module finishes before it)"),
])
def test_a_layer_the_engine_cannot_replay_says_why(model: nn.Module, layer: str,
                                                   why: str) -> None:
    x, y = data()
    assert replayable(model.eval(), x[:2], layer) == ([], why)
    assert scan_replay(model.eval(), (x, y), layer, VARIANTS, "zero", None, CPU, 4) == why


def test_a_layer_whose_output_is_not_batch_first_is_refused() -> None:
    x, y = data()
    model = Transposed().eval()
    assert scan_replay(model, (x, y), "mid", VARIANTS, "zero", None, CPU, 4) == \
        "the layer's output is not one batch-first tensor"


def test_the_outermost_finished_modules_are_replayed_once_per_forward() -> None:
    """``embed`` and ``norm`` finish before ``mid`` starts; a module inside a replayed one
    is not replayed again."""
    block = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8))
    model = nn.Sequential(block, nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    x, _ = data()
    kept, why = replayable(model, x[:2], "1")
    assert (kept, why) == ([block], "")


class Table(nn.Module):
    """Ignores its input; returns what it was built with (a value with no batch, or
    none)."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> Any:
        return self.value


class Odd(nn.Module):
    """Modules before ``mid`` whose outputs are not batch-first tensors: a (5, 8) table
    (not replayable), a scalar, ``None`` and a tuple of batch-first tensors (replayable),
    a dict and a tuple holding the table (not replayable)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.table = Table(torch.ones(5, 8))
        self.scalar = Table(torch.tensor(2.0))
        self.nothing = Table(None)
        self.pair = Table(None)
        self.named = Table({"a": torch.ones(1)})
        self.mixed = Table(None)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        self.pair.value = (h, None)
        self.mixed.value = [h, torch.ones(5, 8)]
        for module in (self.table, self.scalar, self.nothing, self.pair, self.named,
                       self.mixed):
            module(h)
        return self.head(self.mid(h))  # type: ignore[no-any-return]


def test_only_modules_with_batch_first_outputs_are_replayed() -> None:
    model = Odd().eval()
    x, _ = data()
    kept, _ = replayable(model, x[:2], "mid")
    assert kept == [model.embed, model.scalar, model.nothing, model.pair]
    # with one example, every tensor holds the batch
    assert replayable(model, x[:1], "mid")[0] == [model.embed, model.table, model.scalar,
                                                   model.nothing, model.pair, model.mixed]


def test_a_container_layer_does_not_replay_its_own_children() -> None:
    model = nn.Sequential(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), nn.Linear(8, 4)).eval()
    x, _ = data()
    assert replayable(model, x[:2], "0") == (
        [], "nothing before '0' can be replayed (no module finishes before it)")


class Ids(nn.Module):
    """Token ids (N, T) as a keyword -> 4 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.embed(input_ids)).mean(dim=1))  # type: ignore[no-any-return]


def test_the_batch_of_a_dict_of_inputs_is_its_first_dimension() -> None:
    model = Ids().eval()
    ids = TokenBatch({"input_ids": torch.randint(0, 10, (2, 5),
                                                 generator=torch.Generator().manual_seed(0))})
    assert replayable(model, ids, "mid") == ([model.embed], "")


class Pair(Net):
    """Returns (features, logits)."""

    def forward(self, x: torch.Tensor) -> Any:  # type: ignore[override]
        h = self.act(self.mid(self.norm(self.embed(x))))
        return h, self.head(h)


def test_plain_rows_read_the_logits_the_output_names(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = Pair().eval()
    got = run(model, monkeypatch, replayed=0.002, plain=0.002, output=1)
    x, _ = data()
    rows = []
    with torch.no_grad():
        for variant in VARIANTS:
            with ablate(model, {"mid": list(variant)}, ablation="zero"):
                rows.append(model(x)[1].argmax(dim=1))
    assert got.plan != ""
    assert torch.equal(torch.from_numpy(got.predictions), torch.stack(rows))


class IdsAttention(nn.Module):
    """Token ids (N, T) as a keyword -> 4 logits through an HF-style attention of 2
    heads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.embed = nn.Embedding(10, 8)
        self.attn = HFAttention(8, 2)
        self.head = nn.Linear(8, 4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.embed(input_ids)).mean(dim=1))  # type: ignore[no-any-return]


def test_heads_of_tokenizer_style_batches_are_replayed_once_per_head(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``scan()`` on dict batches: no split, so the heads are replayed through their
    projection (the network before it once per batch), and the result says so."""
    from pytest_unitablate.core.scan import scan

    monkeypatch.setattr(replay, "time", Clock(row_durations(0.001, 0.002)))
    g = torch.Generator().manual_seed(0)
    ids, y = torch.randint(0, 10, (6, 5), generator=g), torch.randint(0, 4, (6,), generator=g)
    batches = [({"input_ids": ids[:4]}, y[:4]), ({"input_ids": ids[4:]}, y[4:])]
    model = IdsAttention().eval()
    got = scan(model, batches, "attn.o_proj", unit="head", num_heads=2, progress=False)
    assert got.method == "replay", got.reason
    assert got.reason == "tokenizer-style batches (a dict per batch) are not split"
    assert got.plan == ("the modules that finish before 'attn.o_proj' replayed, the rest "
                        "once per head")
    naive = scan(model, batches, "attn.o_proj", unit="head", num_heads=2, progress=False,
                 method="naive")
    assert (got.predictions == naive.predictions).all()


class Swap(nn.Linear):
    """A linear layer whose output is sequence-first: (tokens, batch, features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).transpose(0, 1)


class SeqFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mid = Swap(3, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(x)).mean(0))  # type: ignore[no-any-return]


@pytest.mark.parametrize("method", ["closed_form", "prefix", "replay"])
def test_a_fast_engine_asked_for_a_layer_that_is_not_batch_first_is_refused(
        method: str) -> None:
    """Asked for, each fast engine refuses a sequence-first layer by name; chosen
    automatically, the naive loop runs and says why."""
    from pytest_unitablate.core.scan import scan
    from pytest_unitablate.errors import ConfigError

    x, y = data(shape=(5, 3))
    with pytest.raises(ConfigError) as raised:
        scan(SeqFirst().eval(), (x, y), "mid", method=method, channel_dim=-1, progress=False)
    assert str(raised.value) == (f"scan(method={method!r}) refused for 'mid': its output "
                                 f"(5, N, 8) is not batch-first")
    auto = scan(SeqFirst().eval(), (x, y), "mid", channel_dim=-1, progress=False)
    assert auto.method == "naive"
    assert auto.reason == ("the layer's output (5, N, 8) has its batch on dimension 1: the "
                           "naive loop")
