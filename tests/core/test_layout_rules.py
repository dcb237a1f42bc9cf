"""Each rule of core/layout.py on its own: what every kind of module says about the layout
of its output (its side, feature count and output ranks), what keeps a layout and what a
``Permute`` turns, and which dimension (or which refusal) each combination of evidence and
shape gives. ``test_layout.py`` checks generated networks against the truth; here each
rule is one module or one field away from the answer it changes."""

from __future__ import annotations

import pytest
import torch
from attention_models import HookPoint
from torch import nn
from torchvision.ops.misc import Permute

from pytest_unitablate.core.layout import DimResolver, Evidence, layer_evidence, unit_dim
from pytest_unitablate.errors import ConfigError


class LayerNorm2d(nn.LayerNorm):
    """timm's kind: a LayerNorm over the channels of N,C,H,W."""


class Conv1D(nn.Module):
    """Hugging Face GPT-2's kind: features last, counted by ``nf``."""

    def __init__(self, nf: int) -> None:
        super().__init__()
        self.nf = nf


class HandNorm(nn.Module):
    """A norm written by hand: a 1-D weight, no side of its own."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))


class HandProj(nn.Module):
    """A projection written by hand: a 2-D weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4, 8))


def _named(name: str) -> nn.Module:
    """A module known only by its class name (timm's DropPath, HF's GELUActivation, or
    one no rule knows)."""
    return type(name, (nn.Module,), {"forward": lambda self, x: x})()


@pytest.mark.parametrize(("module", "side", "features", "ranks"), [
    (nn.Conv1d(3, 5, 1), "first", 5, (3,)),
    (nn.Conv2d(3, 6, 1), "first", 6, (4,)),
    (nn.Conv3d(3, 7, 1), "first", 7, (5,)),
    (nn.BatchNorm1d(5), "first", 5, (2, 3)),
    (nn.BatchNorm2d(6), "first", 6, (4,)),
    (nn.BatchNorm3d(7), "first", 7, (5,)),
    (nn.InstanceNorm2d(4), "first", 4, (4,)),
    (nn.GroupNorm(2, 6), "first", 6, None),
    (nn.LocalResponseNorm(2), "first", None, None),
    (nn.Linear(4, 7), "last", 7, None),
    (nn.Bilinear(3, 4, 9), "last", 9, None),
    (nn.Embedding(10, 6), "last", 6, None),
    (nn.LayerNorm(6), "last", 6, None),
    (nn.RMSNorm(5), "last", 5, None),
    (LayerNorm2d(8), "first", 8, None),
    (Conv1D(12), "last", 12, None),
    (HandNorm(7), None, 7, None),
    (HookPoint(), "hook", None, None),
])
def test_a_module_that_sets_a_feature_count_says_its_own_side(
        module: nn.Module, side: str | None, features: int | None,
        ranks: tuple[int, ...] | None) -> None:
    found = layer_evidence(nn.Sequential(module), "0")
    first = side == "first"
    assert found == Evidence(side, features, "0", cnn_block=first, own=True,
                             has_first=first, ranks=ranks)


@pytest.mark.parametrize("name", ["StochasticDepth", "DropPath", "Dropout", "GELUActivation",
                                  "NewGELUActivation"])
def test_modules_known_by_name_keep_a_cnn_layout(name: str) -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), _named(name))
    assert layer_evidence(net, "1") == Evidence("first", 8, "0", cnn_block=True,
                                                has_first=True, ranks=(4,))
    # all of N, C, H and W are 8: only a kept CNN layout tells dimension 1
    assert unit_dim("1", (2, 8, 8, 8), None, evidence=layer_evidence(net, "1")) == 1


def test_an_unknown_module_keeps_the_feature_count_but_not_the_side() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), _named("Mystery"))
    assert layer_evidence(net, "1") == Evidence(None, 8, "0", cnn_block=False,
                                                has_first=True, ranks=(4,))
    with pytest.raises(ConfigError, match="do not tell which dimension"):
        unit_dim("1", (2, 8, 8, 8), None, evidence=layer_evidence(net, "1"))
    # a hand-written projection's 2-D weight sets no count of its own
    proj = nn.Sequential(nn.Conv2d(3, 8, 1), HandProj())
    assert layer_evidence(proj, "1") == Evidence(None, 8, "0", cnn_block=False,
                                                 has_first=True, ranks=(4,))
    # a PReLU has a 1-D weight but keeps the layout: it is no hand-written norm
    prelu = nn.Sequential(nn.Conv2d(3, 8, 1), nn.PReLU(8))
    assert layer_evidence(prelu, "1") == Evidence("first", 8, "0", cnn_block=True,
                                                  has_first=True, ranks=(4,))


@pytest.mark.parametrize(("before", "dims", "side"), [
    (nn.Linear(3, 5), [0, 3, 1, 2], "first"),
    (nn.Conv2d(3, 5, 1), [0, 2, 3, 1], "last"),
    (nn.Linear(3, 5), [0, 2, 1], "first"),
    (nn.Conv1d(3, 5, 1), [0, 2, 1], "last"),
    (nn.Linear(3, 5), [0, 4, 1, 2, 3], "first"),
    (nn.Conv3d(3, 5, 1), [0, 2, 3, 4, 1], "last"),
    (nn.Conv2d(3, 5, 1), [0, 3, 1, 2], None),  # channels first moved away from 1
    (nn.Linear(3, 5), [0, 2, 3, 1], None),
    (nn.Linear(3, 5), [0, 1, 3, 2], None),  # a swap of two spatial dimensions
])
def test_a_permute_turns_the_side_of_what_runs_before_it(before: nn.Module, dims: list[int],
                                                         side: str | None) -> None:
    net = nn.Sequential(before, Permute(dims))
    found = layer_evidence(net, "1")
    assert found is not None and (found.side, found.features, found.source) == (side, 5, "0")
    block = nn.Sequential(nn.Sequential(before, Permute(dims)))  # inside a block, after it
    inner = layer_evidence(block, "0")
    assert inner is not None and (inner.side, inner.features) == (side, 5)


def test_a_module_named_permute_without_dims_is_not_a_permute() -> None:
    net = nn.Sequential(nn.Conv2d(3, 5, 1), _named("Permute"))
    found = layer_evidence(net, "1")
    assert found is not None and found.side is None and not found.cnn_block


def test_a_first_child_reads_what_runs_before_its_parent() -> None:
    net = nn.Sequential(nn.Conv2d(3, 5, 1), nn.Sequential(nn.ReLU(), nn.Linear(4, 4)))
    assert layer_evidence(net, "1.0") == Evidence("first", 5, "0", cnn_block=True,
                                                  has_first=True, ranks=(4,))
    assert layer_evidence(nn.Sequential(nn.ReLU()), "0") is None  # nothing before it


def _ev(side: str | None = None, features: int | None = 8, *, cnn: bool = False,
        own: bool = False, has_first: bool = False,
        ranks: tuple[int, ...] | None = None) -> Evidence:
    return Evidence(side, features, "blk.conv", cnn_block=cnn, own=own,
                    has_first=has_first, ranks=ranks)


ONE, LAST, UNKNOWN, THREE_D = "1", "channels-last", "do not tell", "not N,C,H,W"


@pytest.mark.parametrize(("shape", "evidence", "answer"), [
    ((4, 8, 6, 6), None, UNKNOWN),
    ((4, 8, 6), None, THREE_D),
    ((4, 8, 6, 6), _ev("hook", None), UNKNOWN),  # another module's hook point
    # a reshape after a convolution changes the rank: it says nothing
    ((4, 8, 36), _ev("first", ranks=(4,), own=True), THREE_D),
    ((4, 8, 6, 8), _ev(None, cnn=True, ranks=(3,)), UNKNOWN),
    ((4, 6, 6, 8), _ev(None, ranks=(3,), has_first=True), LAST),
    ((4, 8, 6, 6), _ev("first", own=True, ranks=(4,)), ONE),
    ((4, 6, 6, 8), _ev("last", own=True), LAST),
    ((4, 6, 6, 5), _ev(None, None, cnn=True), ONE),
    ((4, 6, 6, 5), _ev("first", None), UNKNOWN),
    ((4, 8, 6, 6), _ev("first"), ONE),
    ((4, 8, 6, 6), _ev(None, cnn=True), ONE),
    ((4, 8, 6, 6), _ev(None, has_first=True), ONE),
    ((4, 8, 6, 6), _ev("last"), UNKNOWN),  # a token layer as long as it is wide
    ((4, 6, 6, 8), _ev("first", has_first=True), LAST),
    ((4, 8, 6, 8), _ev("last", cnn=True), ONE),
    ((4, 8, 6, 8), _ev("last"), LAST),
    ((4, 8, 6, 8), _ev("last", has_first=True), UNKNOWN),
    ((4, 8, 6, 8), _ev(None), UNKNOWN),
    ((4, 10, 6, 6), _ev(None, cnn=True), ONE),  # a CNN block that concatenates
    ((4, 10, 6, 6), _ev("first"), UNKNOWN),
])
def test_each_combination_of_evidence_and_shape(shape: tuple[int, ...],
                                                evidence: Evidence | None, answer: str) -> None:
    if answer == ONE:
        assert unit_dim("blk", shape, None, evidence=evidence) == 1
        return
    with pytest.raises(ConfigError) as info:
        unit_dim("blk", shape, None, evidence=evidence)
    text = str(info.value)
    assert text.startswith("layer 'blk' outputs shape (N, ")
    assert text.endswith("on the check, or for the whole spec")
    assert answer in text, text
    if answer == LAST:
        assert "its 8 features are on the last dimension, as 'blk.conv' says" in text


def test_a_hook_points_refusal_names_its_heads_only_on_a_head_hook() -> None:
    hook = Evidence("hook", None, "blocks.0.attn.hook_z")
    with pytest.raises(ConfigError) as info:
        unit_dim("blocks.0.attn.hook_z", (4, 5, 2, 3), None, evidence=hook)
    assert str(info.value) == (
        "layer 'blocks.0.attn.hook_z' outputs shape (N, 5, 2, 3), a TransformerLens hook "
        "point (batch, position, ...): its features are on the last dimension. Say "
        "'channel_dim: -1' for them; for its heads (dimension 2) say 'unit: head', on the "
        "check, or for the whole spec")
    resid = Evidence("hook", None, "blocks.0.hook_resid_pre")
    with pytest.raises(ConfigError) as info:
        unit_dim("blocks.0.hook_resid_pre", (4, 5, 6), None, evidence=resid)
    assert "unit: head" not in str(info.value)
    assert "a TransformerLens hook point" in str(info.value)
    elsewhere = Evidence("hook", None, "blocks.0.hook_resid_pre")
    with pytest.raises(ConfigError) as info:  # the evidence is another module's
        unit_dim("blocks.0.mlp", (4, 5, 6), None, evidence=elsewhere)
    assert "TransformerLens" not in str(info.value)


def test_a_batch_elsewhere_than_dimension_0_decides_nothing_by_itself() -> None:
    with pytest.raises(ConfigError, match="not N,C,H,W"):
        unit_dim("blk", (8, 4, 6), None, batch=1, evidence=_ev("first", own=True))
    assert unit_dim("blk", (8, 4, 6), 0, batch=1) == 0


def test_a_stated_channel_dim_is_checked_against_the_shape_and_the_modules() -> None:
    assert unit_dim("fc", (4, 10), None) == 1
    assert unit_dim("blk", (4, 6, 6, 8), -1, evidence=_ev("last", own=True)) == -1
    assert unit_dim("blk", (4, 8, 6, 6), 1, evidence=_ev("first", own=True)) == 1
    # dimension 1 and 3 are both 8: the stated one cannot be told wrong
    assert unit_dim("blk", (4, 8, 6, 8), 3, evidence=_ev("first", own=True)) == 3
    with pytest.raises(ConfigError) as info:
        unit_dim("blk", (4, 8, 6, 6), -1, evidence=_ev("first", own=True))
    assert str(info.value) == (
        "channel_dim: -1 for layer 'blk' reads dimension 3 of its output (N, 8, 6, [6]), but "
        "'blk.conv' puts its 8 units on dimension 1 (N, [8], 6, 6): say channel_dim: 1 for "
        "this layer (on its check, when the spec's channel_dim is for other layers)")
    with pytest.raises(ConfigError, match="say channel_dim: -1 for this layer"):
        unit_dim("blk", (4, 6, 6, 8), 1, evidence=_ev("last", own=True))
    for stated in (4, -5, 0):
        with pytest.raises(ConfigError) as info:
            unit_dim("blk", (4, 8, 6, 6), stated)
        assert str(info.value) == (
            f"channel_dim: {stated} for layer 'blk', whose output (N, 8, 6, 6) has no such "
            f"dimension besides the batch (N): use one of 1, 2, 3 or -3, -2, -1")


def test_the_resolver_decides_once_per_shape_and_gives_a_non_negative_dimension() -> None:
    net = nn.Sequential(nn.Linear(3, 6))
    resolver = DimResolver(net, "0", -1)
    assert resolver(torch.zeros(2, 5, 6)) == 2
    assert resolver(torch.zeros(2, 6)) == 1
    cnn = DimResolver(nn.Sequential(nn.Conv2d(3, 6, 1)), "0", None)
    assert cnn(torch.zeros(2, 6, 4, 4)) == 1
    cnn.evidence = None  # decided already for this shape: not asked again
    assert cnn(torch.zeros(2, 6, 4, 4)) == 1
    with pytest.raises(ConfigError):
        cnn(torch.zeros(2, 6, 4, 5))


def test_only_modules_of_their_kind_are_read_by_their_attributes() -> None:
    """A ``normalized_shape`` outside a LayerNorm or RMSNorm sets no side; a 1-D weight
    on a container is no hand-written norm (its children decide); a layout-keeping module
    after a block's last decider keeps that decider's side."""

    class Shaped(nn.Module):
        normalized_shape = (8,)

    net = nn.Sequential(nn.Conv2d(3, 8, 1), Shaped())  # an unknown module after a conv
    assert layer_evidence(net, "1") == Evidence(None, 8, "0", cnn_block=False,
                                                has_first=True, ranks=(4,))
    block = nn.Sequential(nn.Linear(3, 5))
    block.weight = nn.Parameter(torch.ones(7))
    found = layer_evidence(nn.Sequential(block), "0")
    assert found is not None and (found.side, found.features, found.own) == ("last", 5, False)
    tail = layer_evidence(nn.Sequential(nn.Sequential(nn.Linear(3, 5), nn.ReLU())), "0")
    assert tail is not None and (tail.side, tail.features, tail.source) == ("last", 5, "0.0")
