"""Unit identity: class-damage profiles and one-to-one matching (core)."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics import assert_f32_close
from torch import nn

from pytest_unitablate.core.identity import (
    SignatureMismatchError,
    cosine_matrix,
    damage_profiles,
    dead_units,
    head_profiles,
    match_scores,
    match_units,
)
from pytest_unitablate.core.unit_order import estimated_damage


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4).flatmap(lambda r: st.tuples(
    st.just(r), st.integers(r, 5), st.integers(0, 2**31 - 1))))
def test_matching_is_one_to_one_and_optimal(shape: tuple[int, int, int]) -> None:
    """Against brute force over every injective assignment: the total score (the cosine
    weighed by the size of the effect) is the largest possible, and no two recorded units
    share a partner; the similarity a match reports is the cosine of its pair."""
    rows, cols, seed = shape
    rng = np.random.default_rng(seed)
    current = rng.normal(size=(cols, 6))
    keys = sorted(rng.choice(50, size=rows, replace=False).tolist())
    recorded = {k: rng.normal(size=6).tolist() for k in keys}
    got = match_units(recorded, current)
    partners = [got[k].unit for k in keys]
    assert len(set(partners)) == rows
    ref = np.array([recorded[k] for k in keys])
    sim = cosine_matrix(ref, current)
    score = match_scores(ref, current, sim)
    best = max(sum(score[i, p[i]] for i in range(rows))
               for p in itertools.permutations(range(cols), rows))
    assert sum(score[i, got[k].unit] for i, k in enumerate(keys)) == pytest.approx(best)
    for i, k in enumerate(keys):
        assert got[k].similarity == pytest.approx(sim[i, got[k].unit])
    for i, k in enumerate(keys):
        assert got[k].best_similarity == pytest.approx(sim[i].max())
        assert got[k].similarity <= got[k].best_similarity + 1e-12


def test_the_strong_carrier_wins_over_a_weak_unit_of_the_same_shape() -> None:
    """The issue's retrain: the recorded unit carried class two (26.5 pp); in the retrain
    a weak unit has almost its shape (cosine 0.963, a fifth of the size) and the class's
    strong carrier a slightly different one (cosine 0.918, the same size)."""
    recorded = {31: [0.05, 0.2, 1.0, 0.1]}
    weak = 0.2 * np.array([0.05, 0.5, 1.0, 0.15])
    strong = np.array([0.4, 0.2, 1.0, 0.1])
    current = np.stack([np.zeros(4), weak, np.zeros(4), strong])
    sim = cosine_matrix(np.array([recorded[31]]), current)[0]
    assert sim[1] > sim[3] > 0.9  # by shape alone the weak unit would win
    match = match_units(recorded, current)[31]
    assert match.unit == 3 and match.similarity == pytest.approx(sim[3])
    assert match.best_unit == 1  # the best cosine is still reported as such


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
    assert_f32_close(new, ref[perm], terms=64, depth=4)
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
    # a forward and a backward pass summed over 50 examples, two ways
    assert_f32_close(total, estimated_damage(net, (x, y), "2"), terms=64, depth=4)
    assert_f32_close(profile[:, 2] * 30, estimated_damage(net, (x, y), "2", target=2),
                     terms=64, depth=4)
    assert net.training is False and all(p.grad is None for p in net.parameters())


class _Encoder(nn.Module):
    """One batch-first encoder block (4 heads of 2) read out at token 0; returns a tuple, so
    ``output=0`` picks the logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.embed = nn.Linear(3, 8)
        self.block = nn.TransformerEncoderLayer(8, 4, dim_feedforward=16, dropout=0.0,
                                                batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.block(self.embed(x))[:, 0]), x


def _true_logp(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        logp = torch.log_softmax(model(x)[0].double(), 1)
    return logp[torch.arange(len(y)), y].numpy()


def test_head_profiles_equal_weight_surgery_per_head_and_class() -> None:
    """Each head's profile against an independent computation: the head zeroed by setting
    its columns of ``out_proj`` to 0 (the same function), the true-class log-probability
    lost averaged per class; classes without examples (2, and 5 from ``num_classes``) are 0.
    The model's train/eval flag and weights are left as they were."""
    model = _Encoder()
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(45, 4, 3, generator=gen)
    y = torch.tensor([0, 1, 3, 4, 1] * 9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # dropout is 0: the same numbers; the flag must come back
    got = head_profiles(model, (x, y), "block.self_attn", num_classes=6, output=0,
                        batch_size=16, device="cpu")
    assert model.training and all(torch.equal(before[k], v)
                                  for k, v in model.state_dict().items())
    model.eval()
    base = _true_logp(model, x, y)
    expected = np.zeros((4, 6))
    for head in range(4):
        surgery = copy.deepcopy(model)
        with torch.no_grad():
            surgery.block.self_attn.out_proj.weight[:, 2 * head:2 * head + 2] = 0
        lost = base - _true_logp(surgery, x, y)
        for k in (0, 1, 3, 4):
            expected[head, k] = lost[y.numpy() == k].mean()
    assert got.shape == (4, 6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert np.abs(got[:, [0, 1, 3, 4]]).min() > 0 and not got[:, [2, 5]].any()
    narrow = head_profiles(model, [(x, y)], "block.self_attn", num_heads=4, output=0)
    np.testing.assert_allclose(narrow, expected[:, :5], rtol=1e-5, atol=1e-7)


def test_dead_units_bounds() -> None:
    """At most ``ratio`` of the recorded norm is dead (the boundary included); a recorded
    profile that was already zero, or an index the layer no longer has, is skipped."""
    profiles = np.array([[0.0, 0.5], [0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    recorded = {0: [0.0, 1.0], 1: [0.0, 0.0], 2: [6.0, 8.0], 3: [1.0, 0.0], 4: [1.0, 0.0],
                9: [1.0, 0.0]}
    assert dead_units(recorded, profiles, ratio=0.5) == {0: 0.5, 2: 0.5, 3: 0.0}
    assert dead_units(recorded, profiles, ratio=0.49) == {3: 0.0}
    assert list(dead_units(recorded, profiles, ratio=0.5)) == [0, 2, 3]
    assert dead_units({0: [1.0, 0.0]}, np.array([[1e-7, 0.0]])) == {0: pytest.approx(1e-7)}
    assert dead_units({0: [1.0, 0.0]}, np.array([[2e-6, 0.0]])) == {}


def test_match_edges_and_description() -> None:
    assert match_units({}, np.ones((3, 2))) == {}
    none = match_units({4: [1.0, 0.0]}, np.zeros((0, 2)))[4]
    assert (none.unit, none.best_unit) == (None, -1)
    assert np.isnan(none.similarity) and np.isnan(none.best_similarity)
    claimed = match_units({1: [1.0, 0.0], 2: [1.0, 0.1]}, np.array([[1.0, 0.05], [0.0, 1.0]]))
    assert claimed[2].describe() == "unit 2 -> unit 1 (similarity 0.10)"
    assert claimed[1].describe() == "unit 1 -> unit 0 (similarity 1.00)"
    assert (claimed[2].best_unit, claimed[2].recorded) == (0, 2)  # claimed by unit 1
    assert claimed[2].best_similarity == pytest.approx(
        (1 + 0.005) / (np.hypot(1, 0.1) * np.hypot(1, 0.05)))


def test_cosine_stays_within_one() -> None:
    """Float rounding puts some vectors' cosine with themselves just above 1 (and with
    their negation just below -1; among 500 random rows, some on any BLAS): the clip keeps
    every similarity in [-1, 1]."""
    v = np.random.default_rng(0).normal(size=(500, 5))
    same, opposite = cosine_matrix(v, v), cosine_matrix(v, -v)
    assert same.max() <= 1.0 and opposite.min() >= -1.0
    np.testing.assert_allclose(np.diag(same), 1.0, atol=1e-12)
    assert cosine_matrix(v[:1], np.zeros((1, 5)))[0, 0] == 0.0
    assert cosine_matrix(np.zeros((1, 5)), v[:1])[0, 0] == 0.0


class _Projection(nn.Module):
    """Attention with its own q/k/v/o projections and no head count anywhere: the
    caller's ``num_heads`` is the only source (2 heads of 3)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.q, self.k, self.v = (nn.Linear(6, 6) for _ in range(3))
        self.o_proj = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(n, t, 2, 3).transpose(1, 2)

        att = torch.softmax(split(self.q(x)) @ split(self.k(x)).transpose(-1, -2), -1)
        return self.o_proj((att @ split(self.v(x))).transpose(1, 2).reshape(n, t, 6))


def test_head_profiles_take_num_heads_from_the_caller_and_keep_singleton_classes() -> None:
    """Where the module names no head count, ``num_heads`` says it; a class with a single
    example gets that example's loss, not 0."""
    torch.manual_seed(8)
    attn = _Projection()
    model = nn.Sequential(attn, nn.Flatten(), nn.Linear(24, 3)).eval()
    x = torch.randn(13, 4, 6)
    y = torch.tensor([0, 1] * 6 + [2])  # class 2: one example
    got = head_profiles(model, (x, y), "0.o_proj", num_heads=2)
    with torch.no_grad():
        base = torch.log_softmax(model(x).double(), 1)[torch.arange(13), y]
        expected = np.zeros((2, 3))
        for head in range(2):
            surgery = copy.deepcopy(model)
            surgery[0].o_proj.weight[:, 3 * head:3 * head + 3] = 0
            lost = (base - torch.log_softmax(surgery(x).double(), 1)[torch.arange(13), y])
            for k in range(3):
                expected[head, k] = lost[y == k].mean().item()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
    assert np.abs(got[:, 2]).min() > 0


def test_channel_profiles_follow_channel_dim_output_and_singleton_classes() -> None:
    """Token neurons (``channel_dim=-1`` on an ``(N, T, C)`` layer) of a model that returns
    a tuple (``output=0``): the profile summed with class counts as weights is the unit
    order's first-order estimate; a class with one example keeps its value."""
    torch.manual_seed(9)
    mlp = nn.Sequential(nn.Linear(3, 5), nn.ReLU())

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp, self.head = mlp, nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.head(self.mlp(x).mean(1)), x

    model = Tokens().eval()
    x, y = torch.randn(11, 4, 3), torch.tensor([0, 1] * 5 + [2])
    got = damage_profiles(model, (x, y), "mlp.1", channel_dim=-1, output=0, num_classes=3)
    assert got.shape == (5, 3)
    for k, count in ((0, 5), (1, 5), (2, 1)):
        np.testing.assert_allclose(
            got[:, k] * count,
            estimated_damage(model, (x, y), "mlp.1", channel_dim=-1, output=0, target=k),
            # two float32 reductions of the same terms in another order: the BLAS of an
            # Intel CPU gave a relative 1.65e-6 where this AMD one gives less than 1e-6
            rtol=1e-5, atol=1e-12)
    assert np.abs(got[:, 2]).max() > 0


def test_profiles_run_on_the_device_asked_for() -> None:
    """``device`` is where the batches go: the meta device, which the CPU model cannot
    take, shows it is used and not ignored."""
    model, x, y = _net(0), torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 3])
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        damage_profiles(model, (x, y), "2", device="meta")
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        head_profiles(_Encoder(), (torch.randn(4, 4, 3), y), "block.self_attn", device="meta")


def test_integer_signatures_are_compared_as_floats() -> None:
    """A hand-written sidecar may hold integers: they are profiles all the same."""
    got = match_units({0: [3, 4], 1: [0, 1]}, np.array([[0.0, 2.0], [6.0, 8.0]]))
    assert (got[0].unit, got[1].unit) == (1, 0)
    assert got[0].similarity == pytest.approx(1.0) and got[1].similarity == pytest.approx(1.0)
    assert dead_units({0: [3, 4]}, np.zeros((1, 2))) == {0: 0.0}
