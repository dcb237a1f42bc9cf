"""Unit identity: class-damage profiles and one-to-one matching (core)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_unitablate.core.identity import (
    SignatureMismatchError,
    cosine_matrix,
    damage_profiles,
    match_units,
)
from pytest_unitablate.core.unit_order import estimated_damage


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4).flatmap(lambda r: st.tuples(
    st.just(r), st.integers(r, 5), st.integers(0, 2**31 - 1))))
def test_matching_is_one_to_one_and_optimal(shape: tuple[int, int, int]) -> None:
    """Against brute force over every injective assignment: the total similarity is the
    largest possible, and no two recorded units share a partner."""
    rows, cols, seed = shape
    rng = np.random.default_rng(seed)
    current = rng.normal(size=(cols, 6))
    keys = sorted(rng.choice(50, size=rows, replace=False).tolist())
    recorded = {k: rng.normal(size=6).tolist() for k in keys}
    got = match_units(recorded, current)
    partners = [got[k].unit for k in keys]
    assert len(set(partners)) == rows
    sim = cosine_matrix(np.array([recorded[k] for k in keys]), current)
    best = max(sum(sim[i, p[i]] for i in range(rows))
               for p in itertools.permutations(range(cols), rows))
    assert sum(got[k].similarity for k in keys) == pytest.approx(best)
    for i, k in enumerate(keys):
        assert got[k].best_similarity == pytest.approx(sim[i].max())
        assert got[k].similarity <= got[k].best_similarity + 1e-12


def test_more_recorded_units_than_the_layer_has() -> None:
    got = match_units({0: [1.0, 0.0], 1: [0.0, 1.0]}, np.array([[0.0, 2.0]]))
    assert got[1].unit == 0 and got[0].unit is None
    assert "no unit left" in got[0].describe()


def test_class_count_mismatch_is_refused() -> None:
    with pytest.raises(SignatureMismatchError, match="2 classes but the model gives 3"):
        match_units({0: [1.0, 0.0]}, np.zeros((4, 3)))


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(5, 4)).eval()


def _permuted(net: nn.Sequential, perm: list[int]) -> nn.Sequential:
    """The same function with the units of module 2 (the first ReLU) reordered."""
    other = _net(0)
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        conv, bn, nxt = other[0], other[1], other[3]
        conv.weight.copy_(net[0].weight[perm])
        conv.bias.copy_(net[0].bias[perm])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name).copy_(getattr(net[1], name)[perm])
        nxt.weight.copy_(net[3].weight[:, perm])
    return other


def test_a_permuted_network_is_matched_back_exactly() -> None:
    """Reordering a layer's units (BN included) keeps the function: every recorded unit is
    found at its new index with similarity 1, and the profiles are the permuted ones."""
    torch.manual_seed(3)
    x, y = torch.randn(64, 1, 6, 6), torch.randint(0, 4, (64,))
    net = _net(1)
    perm = [4, 2, 0, 5, 1, 3]
    moved = _permuted(net, perm)
    assert torch.allclose(net(x), moved(x), atol=1e-5)
    ref = damage_profiles(net, (x, y), "2", num_classes=4)
    new = damage_profiles(moved, (x, y), "2", num_classes=4)
    assert ref.shape == (6, 4)
    np.testing.assert_allclose(new, ref[perm], atol=1e-6)
    got = match_units({u: ref[u].tolist() for u in range(6)}, new)
    assert {u: got[u].unit for u in range(6)} == {old: perm.index(old) for old in range(6)}
    assert all(got[u].similarity == pytest.approx(1.0) for u in range(6))


def test_profiles_are_class_means_of_the_first_order_estimate() -> None:
    """Summed over classes with the class counts as weights, the profile is the
    layer-wide first-order estimate the unit order uses (same numbers, other grouping)."""
    torch.manual_seed(4)
    x, y = torch.randn(50, 1, 6, 6), torch.tensor([0] * 20 + [2] * 30)
    net = _net(2)
    profile = damage_profiles(net, [(x[:25], y[:25]), (x[25:], y[25:])], "2", num_classes=4)
    assert profile.shape == (6, 4) and not profile[:, [1, 3]].any()  # no examples: 0
    total = profile[:, 0] * 20 + profile[:, 2] * 30
    np.testing.assert_allclose(total, estimated_damage(net, (x, y), "2"), rtol=1e-6)
    np.testing.assert_allclose(profile[:, 2] * 30, estimated_damage(net, (x, y), "2",
                                                                    target=2), rtol=1e-6)
    assert net.training is False and all(p.grad is None for p in net.parameters())
