"""scan() equals the naive method (one ablated forward per unit) on generated networks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_unitablate import ablate, evaluate, scan
from pytest_unitablate.core.scan.prefix import PrefixCache
from pytest_unitablate.core.unit_order import class_damage_sums
from pytest_unitablate.errors import ConfigError


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.conv(x)))
        out += x
        return out


class Net(nn.Module):
    """stem -> residual blocks -> [tail] -> GAP -> flatten -> [dropout] -> fc."""

    def __init__(self, width: int, depth: int, tail: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.blocks = nn.Sequential(*[Block(width) for _ in range(depth)])
        self.tail = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU()) if tail else \
            nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(width, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.flat(self.pool(self.tail(self.blocks(self.stem(x)))))))


def naive(model: nn.Module, x: torch.Tensor, layer: str, units: list[Any], ablation: Any,
          means: Any) -> tuple[np.ndarray, np.ndarray]:
    """One forward per element of ``units`` (a unit, or a tuple ablated together)."""
    preds, logits = [], []
    with torch.no_grad():
        model.eval()
        for u in units:
            with ablate(model, {layer: list(u) if isinstance(u, tuple) else [u]},
                        ablation=ablation, means=means):
                out = model(x)
            logits.append(out)
            preds.append(out.argmax(1).numpy())
    return np.stack(preds), torch.stack(logits).numpy()


def _stable(logits: np.ndarray) -> np.ndarray:
    top2 = np.sort(logits, axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]) > 1e-4


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_scan_matches_naive(data: Any) -> None:
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    width = data.draw(st.integers(2, 6))
    depth = data.draw(st.integers(1, 2))
    tail = data.draw(st.booleans())
    model = Net(width, depth, tail)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2)
    model.train(data.draw(st.booleans()))  # scan must switch to eval itself
    n = data.draw(st.integers(3, 20))
    x, y = torch.randn(n, 1, 6, 6), torch.randint(0, 5, (n,))
    layers = ["stem", "blocks", "blocks.0", "blocks.0.bn", "tail" if tail else "blocks"]
    layer = data.draw(st.sampled_from(layers))
    units = data.draw(st.lists(st.integers(0, width - 1), min_size=1, max_size=width,
                               unique=True))
    ablation = data.draw(st.sampled_from(["zero", "mean", 0.25]))
    batch = data.draw(st.integers(1, 8))
    chunk = data.draw(st.integers(1, 4))
    result = scan(model, (x, y), layer, units=units, ablation=ablation, batch_size=batch,
                  chunk_size=chunk)
    means = None
    if ablation == "mean":
        from pytest_unitablate import channel_means
        means = channel_means(model, (x, y), [layer])
    ref_preds, ref_logits = naive(model, x, layer, units, ablation, means)
    stable = _stable(ref_logits)
    assert np.array_equal(result.predictions[stable], ref_preds[stable])
    expected_method = "closed_form" if (layer in ("blocks", "blocks.0") and not tail
                                        and depth == 1) or (layer == "tail") else None
    if layer == "blocks" and not tail:
        expected_method = "closed_form"
    if expected_method:
        assert result.method == expected_method, result.reason
    else:
        assert result.method == "prefix", result.reason
    assert all(not m._forward_hooks for m in model.modules())
    # the same scan after an order pass and a scan left the layer's prefix in a cache
    cache, pair = PrefixCache(), (x, y)  # one data object: entries are kept per object
    class_damage_sums(model, pair, layer, ablation=ablation, means=means, batch_size=batch,
                      prefix_cache=cache)
    for _ in range(2):
        again = scan(model, pair, layer, units=units, ablation=ablation, batch_size=batch,
                     chunk_size=chunk, means=means, prefix_cache=cache)
        assert np.array_equal(again.predictions, result.predictions)
        assert np.array_equal(again.baseline.predictions, result.baseline.predictions)
        assert again.method == result.method
    assert result.method == "closed_form" or cache.stats["reused"] >= 2


@settings(deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_scan_of_unit_sets_ablates_each_set_together(data: Any) -> None:
    """Rows that ablate several units together (what named checks of a layer become) equal
    one real forward per set, in every engine."""
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    width = data.draw(st.integers(2, 6))
    tail = data.draw(st.booleans())
    model = Net(width, 1, tail).eval()
    x, y = torch.randn(data.draw(st.integers(3, 12)), 1, 6, 6), torch.randint(0, 5, (12,))
    y = y[:len(x)]
    layer = data.draw(st.sampled_from(["stem", "blocks", "blocks.0.conv"]
                                      + (["tail"] if tail else [])))
    unit = st.integers(0, width - 1)
    rows = data.draw(st.lists(st.one_of(unit, st.lists(unit, min_size=1, max_size=width,
                                                       unique=True).map(tuple)),
                              min_size=1, max_size=6))
    ablation = data.draw(st.sampled_from(["zero", "mean", -0.5]))
    method = data.draw(st.sampled_from(["auto", "naive"]))
    result = scan(model, (x, y), layer, units=rows, ablation=ablation, method=method,
                  chunk_size=data.draw(st.integers(1, 3)), batch_size=data.draw(st.integers(1, 8)))
    assert result.units == tuple(rows)
    means = None
    if ablation == "mean":
        from pytest_unitablate import channel_means
        means = channel_means(model, (x, y), [layer])
    ref_preds, ref_logits = naive(model, x, layer, rows, ablation, means)
    stable = _stable(ref_logits)
    assert np.array_equal(result.predictions[stable], ref_preds[stable])
    if method == "auto":
        assert result.method == ("closed_form" if layer in ("blocks", "tail") and (
            layer == "tail" or not tail) else "prefix"), result.reason


@pytest.mark.parametrize("layer", ["blocks", "blocks.0.conv"])
def test_a_set_between_single_units_is_ablated_together(layer: str) -> None:
    """Each engine verifies only its first and last rows against real forwards: a set in
    the middle must still be ablated whole (closed form for ``blocks``, prefix else)."""
    torch.manual_seed(3)
    model = Net(5, 1, tail=False).eval()
    x, y = torch.randn(40, 1, 6, 6), torch.randint(0, 5, (40,))
    rows = [0, (0, 1, 2, 3), (1, 4), 2]
    result = scan(model, (x, y), layer, units=rows, chunk_size=2)
    assert result.method == ("closed_form" if layer == "blocks" else "prefix")
    ref_preds, ref_logits = naive(model, x, layer, rows, "zero", None)
    stable = _stable(ref_logits)
    assert np.array_equal(result.predictions[stable], ref_preds[stable])
    assert not np.array_equal(ref_preds[1], ref_preds[0])  # the set changes predictions


def test_method_choice_and_refusals() -> None:
    torch.manual_seed(0)
    model = Net(4, 1, tail=True).eval()
    x, y = torch.randn(10, 1, 6, 6), torch.randint(0, 5, (10,))
    assert scan(model, (x, y), "tail").method == "closed_form"
    # a fixed chunk_size: no timing decides between the prefix engine and the naive loop
    assert scan(model, (x, y), "blocks.0", chunk_size=4).method == "prefix"
    with pytest.raises(ConfigError, match="not per-channel operations"):
        scan(model, (x, y), "blocks.0", method="closed_form")
    assert scan(model, (x, y), "blocks.0", method="naive").method == "naive"


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if h.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            h = h * 2
        return self.fc(h.mean(dim=(2, 3)))


def test_untraceable_model_falls_back_to_naive_and_says_why() -> None:
    torch.manual_seed(0)
    model = Untraceable()
    x, y = torch.randn(6, 1, 5, 5), torch.randint(0, 2, (6,))
    result = scan(model, (x, y), "conv")
    assert result.method == "naive"
    assert "torch.fx cannot trace" in result.reason
    ref, _ = naive(model, x, "conv", [0, 1, 2], "zero", None)
    assert np.array_equal(result.predictions, ref)


def test_frame_columns_and_values() -> None:
    torch.manual_seed(0)
    model = Net(3, 1, tail=False).eval()
    x, y = torch.randn(12, 1, 6, 6), torch.arange(12) % 5
    result = scan(model, (x, y), "blocks")
    frame = result.frame
    assert list(frame.columns) == ["unit", "target", "n", "baseline", "ablated", "drop",
                                   "baseline_logprob", "ablated_logprob", "logprob_drop"]
    assert frame.equals(result.to_pandas())
    overall = frame[frame.target == "overall"]
    assert list(overall.unit) == [0, 1, 2]
    for _, row in overall.iterrows():
        acc = result.unit_correct(int(row.unit)).mean()
        assert row.ablated == pytest.approx(acc)
        assert row["drop"] == pytest.approx(row["baseline"] - acc)
    assert set(frame[frame.target != "overall"].n) <= {2, 3}
    # the log-prob columns against an independent forward per unit, class by class
    with torch.no_grad():
        before = torch.log_softmax(model(x), 1)[torch.arange(12), y]
        for unit in range(3):
            with ablate(model, {"blocks": [unit]}):
                after = torch.log_softmax(model(x), 1)[torch.arange(12), y]
            for target in ["overall", *range(5)]:
                mask = torch.ones(12, dtype=torch.bool) if target == "overall" else y == target
                (row,) = frame[(frame.unit == unit) & (frame.target == target)].itertuples()
                assert row.baseline_logprob == pytest.approx(float(before[mask].mean()),
                                                             abs=1e-5)
                assert row.ablated_logprob == pytest.approx(float(after[mask].mean()), abs=1e-5)
                assert row.logprob_drop == pytest.approx(
                    float((before[mask] - after[mask]).mean()), abs=1e-5)


@pytest.mark.parametrize("layer", ["blocks", "blocks.0.conv"])
def test_every_batchs_baseline_is_its_own(layer: str) -> None:
    """The baseline a scan reports (the unablated pass it makes beside the ablated ones)
    equals evaluate() example by example over several different batches, for the closed
    form and for the prefix engine, with and without a prefix cache."""
    torch.manual_seed(11)
    model = Net(4, 1, tail=False).eval()
    batches = [(torch.randn(9, 1, 6, 6) * (1 + i), torch.randint(0, 5, (9,)))
               for i in range(4)]
    expected = evaluate(model, batches).predictions
    cache = PrefixCache()
    for prefix_cache in (None, cache, cache):
        result = scan(model, batches, layer, units=[0, 1], chunk_size=2,
                      prefix_cache=prefix_cache)
        assert result.method == ("closed_form" if layer == "blocks" else "prefix")
        assert np.array_equal(result.baseline.predictions, expected)
