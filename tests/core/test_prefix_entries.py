"""The prefix cache's bookkeeping on tiny tensors: what a recorder keeps within its budget,
when a kept pass is stale, which entry makes room, and what ``evaluate_keeping`` stores.
(The equivalence of cached and uncached scans on real models is in test_prefix_cache.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytest_unitablate import evaluate
from pytest_unitablate.core.scan.prefix import (
    PrefixCache,
    PrefixEntry,
    Recorder,
    StalePrefix,
    evaluate_keeping,
)

CPU = torch.device("cpu")


def _t(n: int) -> torch.Tensor:
    """``n`` float32 values: ``4 n`` bytes."""
    return torch.zeros(n)


def test_a_recorder_keeps_up_to_its_budget_then_nothing() -> None:
    rec = Recorder(budget=40)
    rec.add((_t(4), _t(2)), logits=_t(2))  # 32 bytes
    assert rec.nbytes == 32 and len(rec.batches) == 1 and rec.logits[0] is not None
    rec.add((_t(2),))  # 40: exactly the budget is kept
    assert rec.nbytes == 40 and rec.logits[1] is None and not rec.full
    rec.add((_t(1),))  # 44 > 40
    assert rec.full and rec.batches == [] and rec.logits == [] and rec.nbytes == 0
    rec.add((_t(1),))
    assert rec.full and rec.batches == [] and rec.nbytes == 0
    other = Recorder(budget=100)
    other.add((_t(4), None, 3))  # values that are not tensors hold no bytes
    assert other.nbytes == 16


def test_kept_logits_are_detached_and_counted_once() -> None:
    w = torch.ones(3, requires_grad=True)
    rec = Recorder(budget=1000)
    rec.add((_t(2),), logits=w * 2)
    assert rec.logits[0] is not None and not rec.logits[0].requires_grad
    entry = PrefixEntry(nn.Linear(1, 1), None, (), "f", [(_t(2),), (_t(2),)], [None, None],
                        16, 0.0)
    entry.add_logits(1, w * 3)
    entry.add_logits(1, w * 5)  # the first stays
    assert entry.nbytes == 28 and entry.logits[1] is not None
    assert entry.logits[1].tolist() == [3.0, 3.0, 3.0] and not entry.logits[1].requires_grad
    assert entry.logits[0] is None


def test_an_entry_knows_its_pass() -> None:
    entry = PrefixEntry(nn.Linear(1, 1), None, (), "abc", [(_t(5),), (_t(3),)], [None] * 2,
                        32, 0.0)
    assert entry.batch(0, 5) is entry.batches[0] and entry.batch(1, 3) is entry.batches[1]
    assert entry.batch(2, 5) is None
    with pytest.raises(StalePrefix):
        entry.batch(1, 4)  # kept for 3 examples
    entry.check_pass("abc", 2)
    for fingerprint, batches in (("abd", 2), ("abc", 1), ("abc", 3)):
        with pytest.raises(StalePrefix):
            entry.check_pass(fingerprint, batches)


def _recorded(nbytes: int, batches: int = 1) -> Recorder:
    rec = Recorder(budget=10**9)
    for _ in range(batches):
        rec.add((_t(nbytes // 4 // batches),))
    return rec


def test_entries_are_keyed_by_model_data_layer_device_and_batch_size() -> None:
    cache = PrefixCache(budget=1000)
    model, other_model = nn.Linear(2, 2), nn.Linear(2, 2)
    data, other_data = [1], [1]
    cache.put(model, data, "a", CPU, 8, _recorded(40), "f")
    assert cache.stats == {"reused": 0, "stored": 1} and cache.held() == 40
    got = cache.get(model, data, "a", CPU, 8)
    assert got is not None and got.fingerprint == "f" and got.model is model
    assert cache.stats["reused"] == 1
    for args in ((other_model, data, "a", CPU, 8), (model, other_data, "a", CPU, 8),
                 (model, data, "b", CPU, 8), (model, data, "a", torch.device("meta"), 8),
                 (model, data, "a", CPU, 16)):
        assert cache.get(*args) is None
    assert cache.stats["reused"] == 1
    cache.drop(model, data, "a", CPU, 8)
    assert cache.get(model, data, "a", CPU, 8) is None and cache.held() == 0
    cache.drop(model, data, "a", CPU, 8)  # dropping what is not there is no error
    # two models' passes over the same data and layer are kept side by side
    cache.put(model, data, "a", CPU, 8, _recorded(40), "m1")
    cache.put(other_model, data, "a", CPU, 8, _recorded(40), "m2")
    first, second = (cache.get(m, data, "a", CPU, 8) for m in (model, other_model))
    assert first is not None and second is not None
    assert (first.fingerprint, second.fingerprint) == ("m1", "m2")


def test_changed_weights_drop_the_entry() -> None:
    cache = PrefixCache(budget=1000)
    model, data = nn.Linear(2, 2), [1]
    cache.put(model, data, "a", CPU, 8, _recorded(40), "f")
    with torch.no_grad():
        model.bias.add_(1.0)  # bumps the version counter
    assert cache.get(model, data, "a", CPU, 8) is None and cache.held() == 0
    buffers = nn.BatchNorm1d(2)
    cache.put(buffers, data, "a", CPU, 8, _recorded(40), "f")
    buffers.running_mean.add_(1.0)
    assert cache.get(buffers, data, "a", CPU, 8) is None
    with torch.inference_mode():
        frozen = nn.Linear(2, 2)  # no version counters: never reused
    cache.put(frozen, data, "a", CPU, 8, _recorded(40), "f")
    assert cache.get(frozen, data, "a", CPU, 8) is None


def test_the_least_recently_used_entry_makes_room() -> None:
    cache = PrefixCache(budget=100)
    model = nn.Linear(2, 2)
    a, b, c = [1], [2], [3]
    cache.put(model, a, "l", CPU, 8, _recorded(40), "fa")
    cache.put(model, b, "l", CPU, 8, _recorded(40), "fb")
    assert cache.get(model, a, "l", CPU, 8) is not None  # a is now the most recent
    cache.put(model, c, "l", CPU, 8, _recorded(40), "fc")  # 120 > 100: b goes
    assert cache.get(model, b, "l", CPU, 8) is None
    assert cache.get(model, a, "l", CPU, 8) is not None
    assert cache.get(model, c, "l", CPU, 8) is not None and cache.held() == 80
    assert cache.get(model, a, "l", CPU, 8) is not None  # order now: c, then a
    # the same pass stored again replaces its entry: its old 40 bytes are not counted,
    # so 40 (c) + 60 fit in 100 and c, the least recently used, stays
    cache.put(model, a, "l", CPU, 8, _recorded(60), "fa2")
    entry = cache.get(model, a, "l", CPU, 8)
    assert entry is not None and entry.fingerprint == "fa2"
    assert cache.get(model, c, "l", CPU, 8) is not None and cache.held() == 100  # the budget
    cache.put(model, b, "l", CPU, 8, _recorded(40), "fb")  # 140 > 100: the oldest, a, goes
    assert cache.get(model, a, "l", CPU, 8) is None and cache.held() == 80
    assert cache.stats == {"stored": 5, "reused": 6}


def test_a_pass_over_the_budget_or_with_no_batches_is_not_stored() -> None:
    cache = PrefixCache(budget=100)
    model = nn.Linear(2, 2)
    full = Recorder(budget=10)
    full.add((_t(4),))
    cache.put(model, [1], "l", CPU, 8, full, "f")
    cache.put(model, [2], "l", CPU, 8, Recorder(budget=10), "f")
    assert cache.stats["stored"] == 0 and cache.held() == 0
    assert cache.recorder().budget == 100


def test_splits_are_traced_once_per_model_layer_and_way() -> None:
    calls: list[str] = []

    def how(model: nn.Module, layer: str) -> tuple[None, str]:
        calls.append(layer)
        return None, f"no split of {layer}"

    def other(model: nn.Module, layer: str) -> tuple[None, str]:
        calls.append("other " + layer)
        return None, "other"

    cache = PrefixCache()
    model = nn.Linear(2, 2)
    assert cache.split(model, "x", how) == (None, "no split of x")
    assert cache.split(model, "x", how) == (None, "no split of x")
    assert cache.split(model, "y", how) == (None, "no split of y")
    assert cache.split(model, "x", other) == (None, "other")
    assert cache.split(nn.Linear(2, 2), "x", how)[1] == "no split of x"
    assert calls == ["x", "y", "other x", "x"]


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 6)
        self.c = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def _chain_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 4, generator=g)
    y = torch.randint(0, 3, (10,), generator=g)
    return [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]


def test_evaluate_keeping_stores_each_layers_prefix_outputs_and_logits() -> None:
    model, data = Chain().eval(), _chain_data()
    cache = PrefixCache()
    result = evaluate_keeping(model, data, ["b", "a", "b"], cache, batch_size=4)
    plain = evaluate(model, data, batch_size=4)
    assert np.array_equal(result.predictions, plain.predictions)
    assert cache.stats["stored"] == 2
    for layer, width in (("a", 8), ("b", 6)):
        entry = cache.get(model, data, layer, CPU, 4)
        assert entry is not None and entry.fingerprint == plain.fingerprint
        assert [b[0].shape for b in entry.batches] == [(4, width), (4, width), (2, width)]
        x = torch.cat([x for x, _ in data])
        out = model.a(x) if layer == "a" else model.b(torch.relu(model.a(x)))
        torch.testing.assert_close(torch.cat([b[0] for b in entry.batches]), out.detach())
        logits = torch.cat([lg for lg in entry.logits if lg is not None])
        torch.testing.assert_close(logits, model(x).detach())
        assert entry.nbytes == 10 * width * 4 + 10 * 3 * 4
        assert entry.whole_seconds is not None and entry.whole_seconds > 0
        assert entry.prefix_seconds > 0


@pytest.mark.parametrize("layers", [["a", "b"], ["b", "a"]])
def test_evaluate_keeping_gives_up_the_biggest_layer_first(layers: list[str]) -> None:
    """The layers share the budget: past it (here after the second batch: 640 bytes of
    600), the biggest is given up, whichever comes first, and the other is still kept for
    the batches after that."""
    model, data = Chain().eval(), _chain_data()
    a_bytes, b_bytes = 10 * 8 * 4 + 120, 10 * 6 * 4 + 120  # outputs and logits
    cache = PrefixCache(budget=600)
    evaluate_keeping(model, data, layers, cache, batch_size=4)
    assert cache.get(model, data, "a", CPU, 4) is None
    assert cache.get(model, data, "b", CPU, 4) is not None and cache.held() == b_bytes
    both = PrefixCache(budget=a_bytes + b_bytes)
    evaluate_keeping(model, data, ["a", "b"], both, batch_size=4)
    assert both.held() == a_bytes + b_bytes


class Twice(nn.Module):
    """The value that skips over ``b`` is module ``a``'s output, and ``a`` runs twice per
    forward: a hook cannot tell which call's output is the kept value."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.c(self.b(self.a(torch.relu(h))) + h)


def test_a_module_called_twice_is_not_kept_and_the_next_layer_is() -> None:
    model, data = Twice().eval(), _chain_data()
    cache = PrefixCache()
    result = evaluate_keeping(model, data, ["b", "c"], cache, batch_size=4)
    assert np.array_equal(result.predictions, evaluate(model, data).predictions)
    assert cache.get(model, data, "b", CPU, 4) is None
    kept = cache.get(model, data, "c", CPU, 4)
    assert kept is not None and len(kept.batches) == 3 and cache.stats["stored"] == 1
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


class InPlace(nn.Module):
    """``stem``'s output changed in place after the module returned (``mul_`` with its
    result unused: torch.fx drops it as dead code, eager runs it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(4, 6)
        self.layer = nn.Linear(6, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h.mul_(1.1)
        return self.fc(h + self.layer(h))


def test_a_value_changed_after_its_module_is_not_kept_and_the_next_layer_is() -> None:
    model, data = InPlace().eval(), _chain_data()
    cache = PrefixCache()
    evaluate_keeping(model, data, ["layer", "stem"], cache, batch_size=4)
    assert cache.get(model, data, "layer", CPU, 4) is None  # kept h differs from fx's
    kept = cache.get(model, data, "stem", CPU, 4)  # copied as it returned
    assert kept is not None and len(kept.batches) == 3


def test_logits_picked_out_of_a_tuple_are_kept() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Chain()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.inner(x), x

    model, data = Pair().eval(), _chain_data()
    cache = PrefixCache()
    result = evaluate_keeping(model, data, ["inner.b"], cache, batch_size=4, output=0)
    entry = cache.get(model, data, "inner.b", CPU, 4)
    assert entry is not None and len(result.predictions) == 10
    x = torch.cat([x for x, _ in data])
    torch.testing.assert_close(torch.cat([lg for lg in entry.logits if lg is not None]),
                               model.inner(x).detach())
