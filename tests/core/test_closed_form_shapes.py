"""Which heads after a layer the closed form takes (a chain of per-channel operations,
flatten and one ``nn.Linear`` that is the output) and which it leaves to the other
engines: each shape by itself, as ``closed_form_head`` sees it, and an accepted one
checked against real ablated forwards."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_unitablate import scan
from pytest_unitablate.core.scan.closed_form import closed_form_head


class After(nn.Module):
    """``conv`` (4 channels), then ``tail`` on its output, then ``fc`` as written."""

    def __init__(self, tail: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                 extra: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.extra = extra if extra is not None else nn.Identity()
        self.fc = nn.Linear(4, 3)
        self.tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self, self.conv(x))


def _pooled(h: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(h, 1).flatten(1)


TAKEN: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "function": lambda m, h: m.fc(_pooled(torch.relu(h))),
    "method": lambda m, h: m.fc(h.relu().mean(dim=(2, 3))),
    "module": lambda m, h: m.fc(_pooled(m.extra(h))),
}
REFUSED: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "a function across channels": lambda m, h: m.fc(_pooled(torch.softmax(h, dim=1))),
    "a method across channels": lambda m, h: m.fc(h.softmax(dim=1).mean(dim=(2, 3))),
    "the layer read twice": lambda m, h: m.fc(_pooled(h) + _pooled(h.relu())),
    "the linear read twice": lambda m, h: (lambda z: z + z.relu())(m.fc(_pooled(h))),
    "a linear that is not the output": lambda m, h: torch.relu(m.fc(_pooled(h))),
    "a linear on two inputs": lambda m, h: F.linear(_pooled(h), m.fc.weight) + m.fc(
        _pooled(h)),
}


@pytest.mark.parametrize("name", list(TAKEN))
def test_a_per_channel_chain_into_the_output_linear_is_taken(name: str) -> None:
    extra = nn.PReLU() if name == "module" else None  # one shared slope
    head = closed_form_head(After(TAKEN[name], extra), "conv")
    assert head is not None and isinstance(head.linear, nn.Linear)
    assert next(iter(head.chain.graph.nodes)).name == "layer_out"


@pytest.mark.parametrize("name", list(REFUSED))
def test_anything_else_after_the_layer_is_left_to_the_other_engines(name: str) -> None:
    assert closed_form_head(After(REFUSED[name]), "conv") is None


def test_a_slope_per_channel_is_left_to_the_other_engines() -> None:
    assert closed_form_head(After(TAKEN["module"], nn.PReLU(4)), "conv") is None
    assert closed_form_head(After(TAKEN["module"]), "nowhere") is None


def test_the_taken_shapes_give_the_rows_of_real_ablated_forwards() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(20, 1, 6, 6), torch.randint(0, 3, (20,))
    for name, tail in TAKEN.items():
        model = After(tail, nn.PReLU() if name == "module" else None).eval()
        fast = scan(model, (x, y), "conv", units=[0, 1, (2, 3)], progress=False)
        naive = scan(model, (x, y), "conv", units=[0, 1, (2, 3)], method="naive",
                     progress=False)
        assert fast.method == "closed_form", (name, fast.reason)
        assert np.array_equal(fast.predictions, naive.predictions), name
