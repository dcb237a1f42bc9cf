"""The hints a located layer error gives: the closest layer names, and the layers near a
layer that ran more than once (or never) that could run once."""

from __future__ import annotations

from torch import nn

from pytest_unitablate.core.layers import closest, layer_names, suggest_single_call_layer

NAMES = ["features.conv5", "features.conv4", "fc", "head.relu", "hidden", "blocks.0.mlp"]


def test_closest_puts_structural_matches_first_then_similar_spellings() -> None:
    assert closest("conv5", NAMES) == ["features.conv5"]
    assert closest("model.fc", NAMES) == ["fc"]  # the name is longer than the layer's
    assert closest("body.relu", NAMES) == ["head.relu"]  # the same last part
    assert closest("hiden", NAMES) == ["hidden"]
    assert closest("zzz", NAMES) == []
    assert closest("conv", ["a.conv", "b.conv", "c.conv", "conv1", "conv2"]) == [
        "a.conv", "b.conv", "c.conv"]
    assert closest("conv", ["a.conv", "b.conv", "c.conv"], n=2) == ["a.conv", "b.conv"]
    # difflib's matches down to a ratio of 0.5 (abcde/abcxyz: 0.55), as many as asked
    assert closest("abcde", ["abcxyz"]) == ["abcxyz"]
    assert sorted(closest("layer", [f"layer{k}" for k in range(5)], n=5)) == [
        f"layer{k}" for k in range(5)]
    # a structural match is not repeated when difflib finds it too
    assert closest("head.relu", ["head.relu", "head.relu2"]) == ["head.relu", "head.relu2"]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)
        self.conv2, self.relu, self.pool = nn.Conv2d(1, 1, 1), nn.ReLU(), nn.Identity()


def test_suggestions_are_the_convolutions_and_norms_before_and_the_parent() -> None:
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(1, 1, 1))
    model.add_module("block", Block())
    model.add_module("act", nn.ReLU())
    model.add_module("out", nn.Identity())
    assert suggest_single_call_layer(model, "block.relu") == ["block.bn1", "block.conv2",
                                                              "block"]
    plain = nn.Sequential(nn.ReLU(), nn.Tanh(), nn.Identity())
    assert suggest_single_call_layer(plain, "2") == ["0", "1"]
    assert layer_names(nn.DataParallel(plain)) == ["0", "1", "2"]


def test_without_convolutions_or_norms_the_last_two_siblings_are_suggested() -> None:
    model = nn.Sequential()
    for name, module in (("a", nn.Linear(2, 2)), ("b", nn.ReLU()), ("c", nn.Identity()),
                         ("d", nn.Linear(2, 2))):
        model.add_module(name, module)
    assert suggest_single_call_layer(model, "b") == ["c", "d"]


def test_the_shape_marks_the_unit_dimension_unless_it_is_the_batch_or_absent() -> None:
    from pytest_unitablate.core.layers import shape_text

    assert shape_text((8, 64)) == "(N, 64)"
    assert shape_text((17, 8, 64), dim=0, batch=1) == "([17], N, 64)"
    assert shape_text((17, 8, 64), dim=-3, batch=1) == "([17], N, 64)"
    assert shape_text((8, 17, 64), dim=0) == "(N, 17, 64)"  # the batch is not a unit axis
    assert shape_text((8, 17, 64), dim=3) == "(N, 17, 64)"  # no such dimension
    assert shape_text((8, 17, 64), dim=-4) == "(N, 17, 64)"
    assert shape_text((), dim=0) == "()"
