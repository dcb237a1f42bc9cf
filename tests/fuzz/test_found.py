"""What the differential fuzzer found, kept as named regression tests.

Both were silent wrong answers on main before the models issue's fixes (``32631c1^``),
found by ``tests/fuzz/test_differential.py``'s own strategy (``hypothesis.find`` with
``random=Random(0)``; CONTRIBUTING, ``make fuzz``). Each now gives the oracle's numbers
or refuses naming the layer.
"""

from __future__ import annotations

import pytest
import torch
from attention_models import HookPoint, TLAttention
from test_differential import Built, Net, Permute, Residual, Target, check_one
from torch import nn

from pytest_unitablate import scan
from pytest_unitablate.errors import UnitAblateError


def _built(blocks: list[nn.Module], x: torch.Tensor, tokens: bool,
           targets: list[Target]) -> Built:
    model = Net(nn.Sequential(*blocks), nn.Linear(8, 4), tokens, "tensor").eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4
    return Built(model, x, y, targets, None)


@pytest.mark.parametrize("ablation", ["zero", "mean", 0.5])
def test_a_convnext_style_linear_is_not_read_as_rows(ablation: object) -> None:
    """Residual(Permute -> Linear -> GELU -> Permute): the Linear outputs N,H,W,C; read as
    N,C,H,W it ablated image rows (max log-prob error 0.013 before the fix)."""
    torch.manual_seed(0)
    built = _built([nn.Conv2d(3, 8, 3, padding=1),
                    Residual(nn.Sequential(Permute(0, 2, 3, 1), nn.Linear(8, 8), nn.GELU(),
                                           Permute(0, 3, 1, 2)))],
                   torch.randn(24, 3, 6, 6), False,
                   [Target("blocks.1.inner.1", "channel", -1, 8)])
    assert check_one(built, built.targets[0], [0], ablation) is None
    with pytest.raises(UnitAblateError, match=r"blocks\.1\.inner\.1"):  # no axis stated
        scan(built.model, (built.x, built.y), "blocks.1.inner.1", units=[0], progress=False)


@pytest.mark.parametrize("ablation", ["zero", "mean", 0.5])
def test_a_hook_z_head_axis_is_not_read_as_tokens(ablation: object) -> None:
    """A TransformerLens-style hook_z, (batch, position, head, d_head): read with the units
    on dimension 1 it ablated positions (max log-prob error 0.165 before the fix)."""
    torch.manual_seed(0)
    layer = "blocks.1.inner.hook_z"
    built = _built([nn.Linear(6, 8), Residual(TLAttention(8, 2))], torch.randn(24, 5, 6),
                   True, [Target(layer, "channel", 2, 2),
                          Target(layer, "head", heads=2, width=8, projection="tl")])
    assert isinstance(dict(built.model.named_modules())[layer], HookPoint)
    for target in built.targets:
        assert check_one(built, target, [1], ablation) is None
