"""Where a layer's units are, decided from the model's modules (core/layout.py): generated
networks that mix channels-first CNN parts with permutes to channels-last and back,
checked against the layout the generator knows. Dimension 1 is taken only where it is the
channels; a plain CNN is never refused; the core API refuses at the first forward."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.ops.misc import Permute

from pytest_unitablate.core.ablation import ablate, channel_means
from pytest_unitablate.core.layers import check_units
from pytest_unitablate.core.layout import unit_dim_of
from pytest_unitablate.core.scan.api import scan
from pytest_unitablate.errors import ConfigError, UnitOutOfRangeError

OPS = ("conv", "bn", "relu", "pool", "to_last", "to_first", "layernorm", "linear", "group")


def _build(ops: list[tuple[str, int]]) -> tuple[nn.Module, dict[str, str], bool]:
    """A network from ``ops`` and the true layout ("first"/"last") of every layer's output;
    whether every op is a plain CNN part. Ops that make no sense in the current layout
    (a convolution on channels-last) are skipped; the first is a convolution."""
    layout, channels = "first", 3
    ops = [("conv", 4), *ops]
    layers: list[tuple[nn.Module, str]] = []
    plain = True
    for op, width in ops:
        if op == "conv" and layout == "first":
            layers.append((nn.Conv2d(channels, width, 1), "first"))
            channels = width
        elif op == "bn" and layout == "first":
            layers.append((nn.BatchNorm2d(channels), "first"))
        elif op == "relu":
            layers.append((nn.ReLU(), layout))
        elif op == "pool" and layout == "first":
            layers.append((nn.MaxPool2d(1), "first"))
        elif op == "to_last" and layout == "first":
            layers.append((Permute([0, 2, 3, 1]), "last"))
            layout, plain = "last", False
        elif op == "to_first" and layout == "last":
            layers.append((Permute([0, 3, 1, 2]), "first"))
            layout = "first"
        elif op == "layernorm" and layout == "last":
            layers.append((nn.LayerNorm(channels), "last"))
        elif op == "linear" and layout == "last":
            layers.append((nn.Linear(channels, width), "last"))
            channels = width
        elif op == "group" and len(layers) >= 2:  # the last two in a block of their own
            (a, _), (b, lb) = layers[-2], layers[-1]
            layers[-2:] = [(nn.Sequential(a, b), lb)]
    model = nn.Sequential(*(m for m, _ in layers))
    truth = {str(i): lay for i, (_, lay) in enumerate(layers)}
    for i, (m, lay) in enumerate(layers):
        if isinstance(m, nn.Sequential):
            truth[f"{i}.1"] = lay
    return model.eval(), truth, plain


def _shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}

    def keep(name: str) -> Any:
        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            shapes.setdefault(name, tuple(out.shape))
        return hook

    handles = [m.register_forward_hook(keep(name))
               for name, m in model.named_modules() if name]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return shapes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from([4, 6, 8])),
                min_size=1, max_size=9),
       st.sampled_from([4, 6, 8]))
def test_dimension_1_only_where_it_is_the_channels(ops: list[tuple[str, int]],
                                                   size: int) -> None:
    model, truth, plain = _build(ops)
    if not truth:
        return
    shapes = _shapes(model, torch.randn(2, 3, size, size))
    for name, layout in truth.items():
        shape = shapes[name]
        try:
            dim = unit_dim_of(model, name, shape, None)
        except ConfigError as exc:
            assert not plain, f"a plain CNN layer {name} was refused: {exc}"
            if layout == "last" and shape[-1] != shape[1]:
                assert "channel_dim: -1" in str(exc)
            continue
        assert dim == 1
        assert layout == "first", f"{name} {shape} is channels-last, read on dimension 1"


def test_a_concatenating_cnn_block_and_what_follows_it_are_channels_first() -> None:
    class Inception(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), self.b(x)], dim=1)

    model = nn.Sequential(Inception(), nn.MaxPool2d(2), nn.ReLU())
    for name, shape in _shapes(model, torch.randn(2, 3, 8, 8)).items():
        if name in ("0", "1", "2"):
            assert unit_dim_of(model, name, shape, None) == 1, name


def test_a_functional_permute_inside_a_block_is_seen_by_the_feature_count() -> None:
    class ToLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).permute(0, 2, 3, 1)  # (N, 8, 8, 5)

    model = nn.Sequential(ToLast(), nn.Flatten(), nn.Linear(320, 3))
    with pytest.raises(ConfigError, match=r"\(N, 8, 8, 5\), which is channels-last"):
        unit_dim_of(model, "0", (2, 8, 8, 5), None)


def test_the_core_api_refuses_channels_last_at_the_first_forward() -> None:
    model = nn.Sequential(nn.Conv2d(3, 5, 1), Permute([0, 2, 3, 1]), nn.LayerNorm(5),
                          nn.Flatten(), nn.Linear(5 * 16, 3)).eval()
    x, y = torch.randn(6, 3, 4, 4), torch.arange(6) % 3
    with pytest.raises(ConfigError, match="channel_dim: -1"), ablate(model, {"2": [1]}):
        model(x)
    with pytest.raises(ConfigError, match="channel_dim: -1"):
        channel_means(model, [(x, y)], ["2"])
    with pytest.raises(ConfigError, match="channel_dim: -1"):
        scan(model, [(x, y)], "2", progress=False)
    with ablate(model, {"2": [1]}, channel_dim=-1):
        out = model(x)
    assert scan(model, [(x, y)], "2", channel_dim=-1, progress=False).units == tuple(range(5))
    assert out.shape == (6, 3)


def test_out_of_range_units_point_at_channel_dim_when_another_dimension_fits() -> None:
    with pytest.raises(UnitOutOfRangeError, match=r"has 8 units along dimension 1.*"
                                                  r"dimension 3 \(size 128\), say "
                                                  r"channel_dim: -1"):
        check_units("features.0", [20], 8, (4, 8, 8, 128), 1)
    with pytest.raises(UnitOutOfRangeError) as info:
        check_units("conv", [9], 8, (4, 8, 8, 8), 1)
    assert "channel_dim" not in str(info.value)  # no dimension has a unit 9 either



def test_nested_blocks_of_activations_after_a_convolution_stay_channels_first() -> None:
    """Hypothesis found it (ops relu, relu, relu, group, group): a block whose activations
    sit in a nested block took the inner container for an unknown module and refused a
    plain CNN output whose channels, height and width are all 4."""
    model, truth, plain = _build([("relu", 4), ("relu", 4), ("relu", 4), ("group", 4),
                                  ("group", 4)])
    assert plain and truth["1"] == "first"
    shapes = _shapes(model, torch.randn(2, 3, 4, 4))
    assert shapes["1"] == (2, 4, 4, 4)
    assert unit_dim_of(model, "1", shapes["1"], None) == 1


def test_a_permute_after_a_convolution_is_refused_and_told_to_say_minus_one() -> None:
    """A Permute that turns a convolution's output channels-last: the features are on the
    last dimension, and the user says so (``channel_dim: -1``) rather than the tool
    assuming it for a layer whose evidence began channels-first."""
    model = nn.Sequential(nn.Conv2d(3, 8, 1), Permute([0, 2, 3, 1]), nn.Linear(8, 4)).eval()
    with pytest.raises(ConfigError) as raised:
        unit_dim_of(model, "1", (2, 5, 6, 8), None)
    assert str(raised.value) == (
        "layer '1' outputs shape (N, 5, 6, 8), which is channels-last (its 8 features are on "
        "the last dimension, as '0' says): dimension 1 would be an image row or a token. Say "
        "'channel_dim: -1', on the check, or for the whole spec")
