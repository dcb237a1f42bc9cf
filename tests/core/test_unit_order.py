"""The first-order damage estimate that orders layer-wide checks: its arithmetic against a
finite difference, and the models it must not trip over or change."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pytest_unitablate.core.unit_order import estimated_damage


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)  # in place, right after the layer
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def _logp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, unit: int, eps: float,
          repl: float) -> float:
    """Summed true-class log-probability with unit's channel moved eps of the way to repl."""
    def hook(m: nn.Module, a: Any, o: torch.Tensor) -> torch.Tensor:
        o = o.clone()
        o[:, unit] = o[:, unit] + eps * (repl - o[:, unit])
        return o

    handle = model.conv.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logp = torch.log_softmax(model(x), dim=1)
    finally:
        handle.remove()
    return float(logp.gather(1, y[:, None]).sum())


@pytest.mark.parametrize(("ablation", "target"), [("zero", None), (0.5, 1), ("zero", 2)])
def test_the_estimate_is_the_directional_derivative(ablation: Any, target: int | None) -> None:
    torch.manual_seed(0)
    model = Net().double().eval()
    x = torch.randn(12, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    damage = estimated_damage(model, (x, y), "conv", target=target, ablation=ablation,
                              batch_size=5)
    keep = torch.ones(12, dtype=torch.bool) if target is None else y == target
    repl = 0.0 if ablation == "zero" else float(ablation)
    eps = 1e-6
    for unit in range(5):
        base = _logp(model, x[keep], y[keep], unit, 0.0, repl)
        moved = _logp(model, x[keep], y[keep], unit, eps, repl)
        assert damage[unit] == pytest.approx(-(moved - base) / eps, rel=1e-3, abs=1e-6)


def test_frozen_tuple_output_models_are_left_as_they_were() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.conv(x)
            return h, h.detach()

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()
            self.drop = nn.Dropout(0.5)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.pair(x)
            return self.fc(self.drop(h.mean(dim=(2, 3))))

    torch.manual_seed(0)
    model = Model().train()
    for p in model.parameters():
        p.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = (torch.randn(6, 1, 5, 5), torch.tensor([0, 1, 0, 1, 0, 1]))
    damage = estimated_damage(model, data, "pair")
    assert damage.shape == (4,) and np.isfinite(damage).all() and np.abs(damage).sum() > 0
    assert model.training and not any(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())
    # a class with no examples: nothing to estimate
    assert estimated_damage(model, data, "pair", target=7).shape == (0,)


def test_only_the_network_after_the_layer_records_a_graph() -> None:
    """The layers before the ablated one keep nothing for backward (a big model's memory),
    and the caller's grad mode is back as it was afterwards."""
    torch.manual_seed(0)
    model = Net().eval()
    modes: dict[str, list[bool]] = {"conv": [], "fc": []}
    model.conv.register_forward_pre_hook(
        lambda m, a: modes["conv"].append(torch.is_grad_enabled()))
    model.fc.register_forward_pre_hook(lambda m, a: modes["fc"].append(torch.is_grad_enabled()))
    x, y = torch.randn(6, 1, 4, 4), torch.randint(0, 3, (6,))
    assert torch.is_grad_enabled()
    damage = estimated_damage(model, (x, y), "relu")
    assert modes == {"conv": [False], "fc": [True]}
    assert torch.is_grad_enabled() and damage.shape == (5,)


class Tokens(nn.Module):
    """Token neurons (an ``(N, T, C)`` layer, ``channel_dim=-1``) in a model that returns a
    tuple (``output=0``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.embed = nn.Linear(3, 6)
        self.mlp = nn.Sequential(nn.Linear(6, 5), nn.GELU())
        self.head = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.mlp(self.embed(x)).mean(1)), x.sum()


def _finite_difference(model: Tokens, x: torch.Tensor, y: torch.Tensor,
                       repl: torch.Tensor) -> np.ndarray:
    """Per unit and example: minus the derivative of log p(true) as the unit's neuron
    moves towards ``repl`` (double precision, forward difference)."""
    eps = 1e-7

    def logp(unit: int, step: float) -> torch.Tensor:
        def hook(m: nn.Module, a: Any, o: torch.Tensor) -> torch.Tensor:
            o = o.clone()
            o[..., unit] = o[..., unit] + step * (repl[unit] - o[..., unit])
            return o

        handle = model.mlp.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return torch.log_softmax(model(x)[0], 1)[torch.arange(len(y)), y]
        finally:
            handle.remove()

    return np.stack([(-(logp(u, eps) - logp(u, 0.0)) / eps).numpy() for u in range(5)])


@pytest.mark.parametrize(("ablation", "target", "cached"), [
    ("zero", None, False), ("mean", 2, True), (0.3, None, True), ("mean", None, False),
    ("zero", 3, True)])
def test_per_class_sums_of_token_neurons_equal_finite_differences(
        ablation: Any, target: int | None, cached: bool) -> None:
    """Per class, the summed estimate and the example counts, for every unit, through
    forward hooks and through the split network (twice: filling the prefix cache, then
    reading it); a batch without the target class is skipped, not miscounted."""
    from pytest_unitablate.core.scan.prefix import PrefixCache
    from pytest_unitablate.core.unit_order import class_damage_sums

    model = Tokens().double().eval()
    g = torch.Generator().manual_seed(12)
    x = torch.randn(19, 4, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 1, 0, 1, 0, 0, 1, 0, 1, 3, 2, 2, 1, 0])
    data = [(x[:7], y[:7]), (x[7:14], y[7:14]), (x[14:], y[14:])]  # no 2 in batch two
    with torch.no_grad():
        acts = model.mlp(model.embed(x))
    means = {"mlp": acts.reshape(-1, 5).mean(0)}
    repl = {"zero": torch.zeros(5), "mean": means["mlp"]}.get(
        ablation, torch.full((5,), 0.3, dtype=torch.float64)).double()
    per_example = _finite_difference(model, x, y, repl)
    keep = np.ones(19, dtype=bool) if target is None else (y == target).numpy()
    width = int(y[torch.as_tensor(keep)].max()) + 1
    expected = np.zeros((5, width))
    for k in range(width):
        expected[:, k] = per_example[:, keep & (y.numpy() == k)].sum(axis=1)
    counts = np.bincount(y.numpy()[keep], minlength=width)
    cache = PrefixCache() if cached else None
    for _ in range(2 if cached else 1):
        sums, got_counts = class_damage_sums(
            model, data, "mlp", target=target, ablation=ablation, means=means,
            channel_dim=-1, output=0, prefix_cache=cache, batch_size=7)
        assert sums.shape == (5, width) and sums.dtype == np.float64
        np.testing.assert_allclose(sums, expected, rtol=1e-4, atol=1e-6)
        assert got_counts.tolist() == counts.tolist()
    if cache is not None:  # read on the second pass, and still there after it
        assert cache.stats == {"reused": 1, "stored": 1}
        assert cache.get(model, data, "mlp", torch.device("cpu"), 7) is not None
    total = estimated_damage(model, data, "mlp", target=target, ablation=ablation,
                             means=means, channel_dim=-1, output=0)
    np.testing.assert_allclose(total, expected.sum(axis=1), rtol=1e-4, atol=1e-6)


def test_no_examples_of_the_target_give_an_empty_estimate() -> None:
    from pytest_unitablate.core.unit_order import class_damage_sums

    model = Tokens().eval()
    data = (torch.randn(6, 4, 3), torch.zeros(6, dtype=torch.long))
    sums, counts = class_damage_sums(model, data, "mlp", target=1, channel_dim=-1, output=0)
    assert sums.shape == (0, 0) and counts.shape == (0,) and sums.dtype == np.float64
    empty = estimated_damage(model, data, "mlp", target=1, channel_dim=-1, output=0)
    assert empty.shape == (0,) and empty.dtype == np.float64


def test_the_total_passes_everything_on() -> None:
    """``estimated_damage`` hands its caller's cache, device and batch size on: the prefix
    cache is filled, the meta device is refused, and one unit of one class is summed."""
    from pytest_unitablate.core.scan.prefix import PrefixCache

    model = Tokens().eval()
    data = (torch.randn(6, 4, 3), torch.tensor([0, 1, 2, 3, 0, 1]))
    cache = PrefixCache()
    first = estimated_damage(model, data, "mlp", channel_dim=-1, output=0, prefix_cache=cache,
                             batch_size=4)
    assert cache.stats["stored"] == 1 and first.shape == (5,)
    assert cache.get(model, data, "mlp", torch.device("cpu"), 4) is not None  # batch size
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        estimated_damage(model, data, "mlp", channel_dim=-1, output=0, device="meta")
    one = nn.Sequential(nn.Linear(3, 1), nn.Tanh(), nn.Linear(1, 2)).double().eval()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.zeros(5, dtype=torch.long)
    got = estimated_damage(one, (x, y), "1")
    assert got.shape == (1,) and got[0] != 0
    with torch.no_grad():
        a = one[1](one[0](x))
        base = torch.log_softmax(one[2](a), 1)[:, 0]
        eps = 1e-6
        moved = torch.log_softmax(one[2](a * (1 - eps)), 1)[:, 0]
    assert got[0] == pytest.approx(float((base - moved).sum() / eps), rel=1e-4, abs=1e-8)


class KeptTokens(Tokens):
    """:class:`Tokens` whose second output comes after the layer: nothing but the layer's
    output crosses it, so the baseline pass can keep its prefix."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.mlp(self.embed(x)).mean(1))
        return logits, logits.sum()


def _tokens_data(seed: int = 13) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(19, 4, 3, generator=g)
    y = torch.randint(0, 4, (19,), generator=g)
    return [(x[:7], y[:7]), (x[7:14], y[7:14]), (x[14:], y[14:])]


def _prefix_runs(cache: Any, model: nn.Module) -> list[int]:
    """How many examples each call of the split's prefix graph runs."""
    split, why = cache.split(model, "mlp")
    assert split is not None, why
    runs: list[int] = []
    split.prefix.register_forward_hook(lambda m, a, o: runs.append(int(a[0].shape[0])))
    return runs


def test_the_order_reads_the_prefix_the_baseline_kept() -> None:
    """After ``evaluate_keeping``, the unit order runs only the network after the layer
    (the prefix graph runs just the 7-example check of the split), reads the entry with
    the baseline's device, batch size and fingerprint, and leaves it for the sweeps."""
    from pytest_unitablate.core.scan.prefix import PrefixCache, evaluate_keeping
    from pytest_unitablate.core.unit_order import class_damage_sums

    model, data = KeptTokens().eval(), _tokens_data()
    cache = PrefixCache()
    evaluate_keeping(model, data, ["mlp"], cache, batch_size=7, output=0)
    assert cache.stats == {"reused": 0, "stored": 1}
    runs = _prefix_runs(cache, model)
    plain = class_damage_sums(model, data, "mlp", channel_dim=-1, output=0)
    for target in (None, 1):
        got = class_damage_sums(model, data, "mlp", channel_dim=-1, output=0, target=target,
                                prefix_cache=cache, batch_size=7)
        want = plain if target is None else class_damage_sums(
            model, data, "mlp", channel_dim=-1, output=0, target=target)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-7)
        assert got[1].tolist() == want[1].tolist()
    assert runs == [7, 7]  # one check of the split per pass, never a whole batch
    assert cache.stats == {"reused": 2, "stored": 1}
    assert cache.get(model, data, "mlp", torch.device("cpu"), 7) is not None


@pytest.mark.parametrize("change", ["values", "batch size", "one batch more"])
def test_a_kept_pass_that_no_longer_matches_the_data_is_dropped(change: str) -> None:
    """The same list object with other contents: the order is computed afresh (equal to
    an uncached one on the new data), and the stale entry is gone."""
    from pytest_unitablate.core.scan.prefix import PrefixCache
    from pytest_unitablate.core.unit_order import class_damage_sums

    model, data = KeptTokens().eval(), _tokens_data()
    cache = PrefixCache()
    class_damage_sums(model, data, "mlp", channel_dim=-1, output=0, prefix_cache=cache,
                      batch_size=7)
    assert cache.stats["stored"] == 1
    if change == "values":
        data[1] = (data[1][0] + 1.0, data[1][1])
    elif change == "batch size":
        data[2] = (data[2][0][:3], data[2][1][:3])
    else:
        data.append(_tokens_data(seed=14)[0])
    got = class_damage_sums(model, data, "mlp", channel_dim=-1, output=0, prefix_cache=cache,
                            batch_size=7)
    want = class_damage_sums(model, data, "mlp", channel_dim=-1, output=0)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-7)
    assert got[1].tolist() == want[1].tolist()
    assert cache.get(model, data, "mlp", torch.device("cpu"), 7) is None
