"""``resolve_units``: what a check's units are on the model under test. A head check
names its heads from the attention site (before anything runs, so a layer without heads
says so even where the data never reaches it); a channel check its stated axis."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from attention_models import QuietNet
from torch import nn

from pytest_unitablate.engine.units import LayerUnits, resolve_units
from pytest_unitablate.errors import UnsupportedModelError
from pytest_unitablate.spec.loader import load_spec
from pytest_unitablate.spec.model import Spec

TOKENS = torch.randn(3, 5, 3, generator=torch.Generator().manual_seed(0))


class SpareNet(QuietNet):
    """A :class:`QuietNet` with a linear layer its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.spare = nn.Linear(8, 8)


def _spec(tmp_path: Path, check: str) -> Spec:
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: m\ndata: d\nchecks:\n" + check, encoding="utf-8")
    return load_spec(path)


def test_a_head_check_counts_the_heads_the_spec_states(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "  - {layer: attn.o_proj, unit: head, num_heads: 2, units: [1],\n"
                           "     expect: {overall: {max_drop: 100%}}}\n")
    units = resolve_units(spec, spec.checks[0], SpareNet().eval(), TOKENS)
    assert units == LayerUnits("attn.o_proj", "head", -1, 2, 2, (2, 5, 8))
    assert units.key() == {"layer": "attn.o_proj", "unit": "head", "channel_dim": -1,
                           "num_heads": 2}
    assert units.core_args() == {"channel_dim": -1, "unit": "head", "num_heads": 2}


def test_a_head_check_on_a_layer_without_heads_says_so_before_running(
        tmp_path: Path) -> None:
    """``spare`` never runs on the data: the head site's refusal comes first."""
    spec = _spec(tmp_path, "  - {layer: spare, unit: head, num_heads: 2, units: [1],\n"
                           "     expect: {overall: {max_drop: 100%}}}\n")
    with pytest.raises(UnsupportedModelError, match=r"'spare' is a Linear\. Its channels are "
                                                    "not heads"):
        resolve_units(spec, spec.checks[0], SpareNet().eval(), TOKENS)


def test_a_channel_check_on_tokens_takes_its_stated_axis(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "  - {layer: embed, channel_dim: 2, units: [1],\n"
                           "     expect: {overall: {max_drop: 100%}}}\n")
    units = resolve_units(spec, spec.checks[0], SpareNet().eval(), TOKENS)
    assert units == LayerUnits("embed", "channel", 2, None, 8, (2, 5, 8), 0)
