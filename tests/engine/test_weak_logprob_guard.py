"""Record mode refuses a weak log-prob guard as it refuses a weak accuracy guard.

A unit that moves the true class's log-probability a lot on a few examples and not at all
on the rest has a mean drop with a wide interval: its recorded lower bound keeps too
little of the effect to guard it. Nothing is written and the spec file is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pytest_unitablate import run_spec


class FewCarriers(nn.Module):
    """Unit 0 of ``hidden`` carries class 0's logit (3 nats); classes 1 and 2 have their
    own units. Six of forty examples are class 0: the log-prob drop of ablating unit 0 is
    large on them and zero elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(3, 3)
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(3))
            self.hidden.bias.zero_()
            self.head.weight.copy_(3 * torch.eye(3))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x))  # type: ignore[no-any-return]


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    labels = torch.tensor([0] * 6 + [1] * 17 + [2] * 17)
    noise = torch.linspace(0, 0.3, 40)[:, None]  # every example a little different
    inputs = torch.eye(3)[labels] + noise * torch.tensor([[0.0, 1.0, -1.0]])
    return [(inputs[i:i + 8], labels[i:i + 8]) for i in range(0, 40, 8)]


SPEC = """\
unitablate: 1
model: few
data: data
classes: [zero, one, two]
checks:
  - layer: hidden
    units: [0]
    expect:
      overall: {min_logprob_drop: null}
"""


def test_record_mode_refuses_a_weak_logprob_guard_and_leaves_the_spec(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    fixtures = {"few": FewCarriers().eval(), "data": _data()}
    run = run_spec(path, fixtures=fixtures, record_mode="new", record_force=True)
    (item,) = run.items
    assert item.outcome == "failed", item.message
    assert item.message is not None and "guard would be weak: not recorded" in item.message
    assert "min_logprob_drop" in item.message and "less than 50%" in item.message
    assert path.read_text() == SPEC  # nothing written
