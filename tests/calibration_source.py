"""The calibration tests' model, spec head and checks (the plugin's and run_spec's).

The model: ``logits = hidden(x) + alpha * x`` with ``hidden`` the identity, so ablating
hidden unit k leaves class k only its ``alpha_k`` share of the logit; each variant (a
"retrain", chosen by the ``VARIANT`` environment variable) has other alphas, so unit k's
class drop varies between variants as training noise does. Labels are the input's argmax
with 10% flipped: no variant is 100% right.
"""

from __future__ import annotations

MODEL = """\
import os

import torch
from torch import nn

ALPHAS = {"0": [0.05, 1.0, 0.1, 3.0], "1": [0.06, 0.2, 0.3, 3.0], "2": [0.07, 0.5, 0.2, 3.0],
          "3": [0.06, 0.4, 0.15, 3.0], "destroyed": [1.06, 0.2, 0.3, 3.0]}
#: a unit switched off by its weight; the skip path (alpha 1.0) carries its class alone
DEAD = {"0": 1, "destroyed": 0}


class Model(nn.Module):
    def __init__(self, alpha, dead=None):
        super().__init__()
        self.hidden = nn.Linear(4, 4, bias=False)
        self.hidden.weight.data = torch.eye(4)
        if dead is not None:
            self.hidden.weight.data[dead, dead] = 0.0
        self.register_buffer("alpha", torch.tensor(alpha))

    def forward(self, x):
        return self.hidden(x) + self.alpha * x


def model():
    variant = os.environ.get("VARIANT", "0")
    return Model(ALPHAS[variant], DEAD.get(variant)).eval()


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(800, 4, generator=g).abs()
    y = x.argmax(1)
    flip = torch.rand(800, generator=g) < 0.1
    y[flip] = torch.randint(0, 4, (int(flip.sum()),), generator=g)
    return [(x[i:i + 200], y[i:i + 200]) for i in range(0, 800, 200)]
"""

HEAD = """\
unitablate: 1
model: calmodel:model
data: calmodel:data
classes: [zero, one, two, three]
"""

BODY = """\
checks:
  - layer: hidden
    units: [0]
    expect:
      zero: {min_drop: 50%, min_logprob_drop: 0.5}   # the team's guess
      overall: {max_drop: 30%}
  - layer: hidden
    units: [1]
    expect:
      one: {min_relative_drop: 10%}   # unit 1 is dead in variant 0
"""
