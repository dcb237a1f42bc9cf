"""Scans and unit orders that share a layer's prefix pass (core.prefix_cache): the same
results as without it, the prefix run once, and never a stale entry (changed data,
changed weights, an entry over the budget)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from pytest_unitablate import evaluate, scan
from pytest_unitablate.core.scan.prefix import PrefixCache, evaluate_keeping
from pytest_unitablate.core.unit_order import class_damage_sums


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=6).eval()


def _data(n: int = 48, size: int = 32, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 6, (n,), generator=g)
    return [(x[i:i + 20], y[i:i + 20]) for i in range(0, n, 20)]  # the last batch is short


def _count_prefix(cache: PrefixCache, model: nn.Module, layer: str) -> list[int]:
    split, why = cache.split(model, layer)
    assert split is not None, why
    examples: list[int] = []  # per call of the prefix graph, how many examples it ran
    split.prefix.register_forward_hook(lambda m, a, o: examples.append(int(a[0].shape[0])))
    return examples


@pytest.mark.parametrize("layer", ["layer3", "layer2.0.conv1", "layer1.1"])
@pytest.mark.parametrize("target", [None, 2])
def test_order_and_scans_equal_the_uncached_ones_and_run_the_prefix_once(
        layer: str, target: int | None) -> None:
    model, data = _resnet(), _data()
    cache = PrefixCache()
    examples = _count_prefix(cache, model, layer)
    sums, counts = class_damage_sums(model, data, layer, target=target, prefix_cache=cache)
    plain_sums, plain_counts = class_damage_sums(model, data, layer, target=target)
    np.testing.assert_allclose(sums, plain_sums, rtol=1e-4, atol=1e-6)
    assert np.array_equal(counts, plain_counts)
    # the whole data once, kept (also for a class target), and 16 examples checking the split
    assert examples == [20, 16, 20, 8]
    for units in ([5], [0, 3, 9, 17]):
        # method="prefix": auto may measure the naive loop faster on a loaded machine
        cached = scan(model, data, layer, units=units, prefix_cache=cache, progress=False,
                      method="prefix")
        plain = scan(model, data, layer, units=units, progress=False, method="prefix")
        assert cached.method == plain.method == "prefix"
        assert np.array_equal(cached.predictions, plain.predictions)
        assert np.array_equal(cached.baseline.predictions, plain.baseline.predictions)
        assert cached.baseline.fingerprint == plain.baseline.fingerprint
    assert examples == [20, 16, 20, 8]  # the scans ran only the network after the layer
    assert cache.stats == {"reused": 2, "stored": 1}


def test_changed_data_is_computed_again_not_read_from_the_cache() -> None:
    model, data = _resnet(), _data()
    cache = PrefixCache()
    scan(model, data, "layer3", units=[1, 2], prefix_cache=cache, progress=False)
    other = _data(seed=7)
    data[1] = other[1]  # the same list object, another batch in it
    cached = scan(model, data, "layer3", units=[1, 2], prefix_cache=cache, progress=False)
    fresh = scan(model, data, "layer3", units=[1, 2], progress=False)
    assert np.array_equal(cached.predictions, fresh.predictions)
    assert np.array_equal(cached.baseline.predictions, fresh.baseline.predictions)
    # and the order pass alike
    data[2] = other[2]
    sums, _ = class_damage_sums(model, data, "layer3", prefix_cache=cache)
    np.testing.assert_allclose(sums, class_damage_sums(model, data, "layer3")[0], rtol=1e-4,
                               atol=1e-6)


def test_changed_weights_are_not_read_from_the_cache() -> None:
    model, data = _resnet(), _data()
    cache = PrefixCache()
    scan(model, data, "layer3", units=[4], prefix_cache=cache, progress=False)
    with torch.no_grad():
        model.layer1[0].conv1.weight.mul_(-1.0)  # before the layer: its output changes
    cached = scan(model, data, "layer3", units=[4], prefix_cache=cache, progress=False)
    fresh = scan(model, data, "layer3", units=[4], progress=False)
    assert cached.method == "prefix"  # (a stale prefix fails verification: naive loop)
    assert np.array_equal(cached.predictions, fresh.predictions)
    assert np.array_equal(cached.baseline.predictions, fresh.baseline.predictions)


def test_an_entry_over_the_budget_is_not_kept_and_older_ones_make_room() -> None:
    model, data = _resnet(), _data()
    tiny = PrefixCache(budget=1024)
    result = scan(model, data, "layer3", units=[4], prefix_cache=tiny, progress=False)
    assert tiny.held() == 0 and tiny.stats["stored"] == 0
    assert np.array_equal(result.predictions,
                          scan(model, data, "layer3", units=[4], progress=False).predictions)
    one_layer = 48 * 256 * 2 * 2 * 4 + 48 * 6 * 4  # layer3 outputs and the logits, float32
    cache = PrefixCache(budget=int(one_layer * 1.5))
    scan(model, data, "layer3", units=[4], prefix_cache=cache, progress=False)
    assert cache.held() == one_layer
    scan(model, data, "layer4.0", units=[4], prefix_cache=cache, progress=False)
    assert 0 < cache.held() <= cache.budget
    assert cache.get(model, data, "layer3", torch.device("cpu"), 256) is None  # made room


def test_a_layer_with_a_tuple_output_orders_its_units_as_without_a_cache() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.conv(x)
            return h, h * 0.5

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, g = self.pair(x)
            return self.fc((h + g).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Model().eval()
    data: Any = (torch.randn(6, 1, 5, 5), torch.tensor([0, 1, 0, 1, 0, 1]))
    cache = PrefixCache()
    sums, _ = class_damage_sums(model, data, "pair", prefix_cache=cache)
    np.testing.assert_allclose(sums, class_damage_sums(model, data, "pair")[0], rtol=1e-5)
    # the prefix engine cannot ablate a tuple: the scan says so and runs the naive loop
    result = scan(model, data, "pair", prefix_cache=cache, progress=False)
    assert result.method == "naive" and "not one tensor" in result.reason
    assert np.array_equal(result.predictions,
                          scan(model, data, "pair", method="naive", progress=False).predictions)


def test_in_place_ops_after_the_layer_neither_corrupt_nor_mislead() -> None:
    """``h.mul_(3)`` whose result is unused: torch.fx drops it as dead code, so the split
    network is wrong; the order then comes from hooks, the scan from the naive loop, and a
    later pass is not fed values a suffix changed in place."""

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 6, 3)
            self.layer = nn.Conv2d(6, 6, 3)
            self.b = nn.Conv2d(6, 8, 1)
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.layer(torch.relu(self.a(x)))
            h.mul_(3.0)
            h.add_(0.5)
            return self.fc(torch.tanh(self.b(h)).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = InPlace().eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(30, 1, 9, 9, generator=g), torch.randint(0, 3, (30,), generator=g))
            for _ in range(3)]
    cache = PrefixCache()
    plain = class_damage_sums(model, data, "layer")[0]
    for _ in range(2):
        np.testing.assert_allclose(class_damage_sums(model, data, "layer", prefix_cache=cache)[0],
                                   plain, rtol=1e-5)
        result = scan(model, data, "layer", prefix_cache=cache, progress=False)
        naive = scan(model, data, "layer", method="naive", progress=False)
        assert np.array_equal(result.predictions, naive.predictions)
        assert np.array_equal(result.baseline.predictions, naive.baseline.predictions)


def test_the_baseline_pass_leaves_each_layer_prefix_for_the_passes_after_it() -> None:
    model, data = _resnet(), _data()
    layers = ["layer3", "layer2.0.conv1", "layer1.1"]
    cache = PrefixCache()
    base = evaluate_keeping(model, data, layers, cache)
    plain = evaluate(model, data)
    assert np.array_equal(base.predictions, plain.predictions)
    assert base.fingerprint == plain.fingerprint
    assert cache.stats["stored"] == 3
    for layer in layers:
        examples = _count_prefix(cache, model, layer)
        np.testing.assert_allclose(class_damage_sums(model, data, layer, prefix_cache=cache)[0],
                                   class_damage_sums(model, data, layer)[0], rtol=1e-4,
                                   atol=1e-6)
        cached = scan(model, data, layer, units=[0, 3, 5], prefix_cache=cache, progress=False)
        fresh = scan(model, data, layer, units=[0, 3, 5], progress=False)
        assert cached.method == fresh.method == "prefix"
        assert np.array_equal(cached.predictions, fresh.predictions)
        assert np.array_equal(cached.baseline.predictions, plain.predictions)
        assert examples == [16]  # only the order pass's check of the split; no whole batch


def test_values_the_eager_forward_changes_after_their_module_are_not_kept() -> None:
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1)
            self.act = nn.ReLU(inplace=True)
            self.layer = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.stem(x)
            self.act(h)  # in place, result unused: fx drops it, eager keeps it
            return self.fc((h + self.layer(h)).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = Skip().eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(30, 1, 6, 6, generator=g), torch.randint(0, 3, (30,), generator=g))
            for _ in range(2)]
    cache = PrefixCache()
    evaluate_keeping(model, data, ["layer"], cache)
    assert cache.stats["stored"] == 0
    result = scan(model, data, "layer", prefix_cache=cache, progress=False)
    assert np.array_equal(result.predictions,
                          scan(model, data, "layer", method="naive", progress=False).predictions)


def test_the_layers_kept_by_one_baseline_pass_share_the_budget() -> None:
    model, data = _resnet(), _data()
    layer3 = 48 * 256 * 2 * 2 * 4 + 48 * 6 * 4  # outputs and logits, float32
    layer2 = 48 * 128 * 4 * 4 * 4 + 48 * 6 * 4
    cache = PrefixCache(budget=layer3 + layer2 // 2)
    evaluate_keeping(model, data, ["layer3", "layer2"], cache)
    assert cache.held() == layer3  # layer2 did not fit beside it
    assert cache.get(model, data, "layer2", torch.device("cpu"), 256) is None


def test_batches_of_another_size_are_computed_again_not_misread() -> None:
    model, data = _resnet(), _data()
    cache = PrefixCache()
    evaluate_keeping(model, data, ["layer3"], cache)
    x, y = data[1]
    data[1] = (x[:7], y[:7])  # the same list, a shorter second batch
    sums = class_damage_sums(model, data, "layer3", prefix_cache=cache)[0]
    np.testing.assert_allclose(sums, class_damage_sums(model, data, "layer3")[0], rtol=1e-4,
                               atol=1e-6)
    evaluate_keeping(model, data, ["layer3"], cache)
    data[2] = (data[2][0][:3], data[2][1][:3])
    cached = scan(model, data, "layer3", units=[2], prefix_cache=cache, progress=False)
    fresh = scan(model, data, "layer3", units=[2], progress=False)
    assert np.array_equal(cached.predictions, fresh.predictions)
    assert np.array_equal(cached.baseline.labels, fresh.baseline.labels)
