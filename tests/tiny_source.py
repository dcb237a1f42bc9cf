"""The hand-built network the plugin tests write into their pytester dirs, and a spec writer.

The tiny model routes a one-hot input to the logits through ``hidden`` (4 units): ablating
unit k < 3 zeroes class k's logit (recall 100% -> 0%); class three's bias keeps it right.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

HEAD = """\
unitablate: 1
model: tinymodel:model
data: tinymodel:data
classes: [zero, one, two, three]
"""


def spec(pytester: pytest.Pytester, body: str, name: str = "spec.yaml",
         head: str = HEAD) -> Path:
    path = pytester.path / name
    path.write_text(head + textwrap.dedent(body))
    return path


#: The top unit for class zero must carry it.
TOP_ZERO = """\
  - layer: hidden
    top_units:
      k: 1
      class: zero
      expect:
        zero: {min_drop: 90%}
"""

#: One check of every kind (named units, any_unit, every_unit, top_units) on the tiny model.
ALL_ENGINES = """\
checks:
  - layer: hidden
    units: [1]
    expect:
      one: {min_drop: 90%}
  - layer: hidden
    any_unit:
      expect:
        two: {min_drop: 90%}
  - layer: hidden
    every_unit:
      expect:
        overall: {max_drop: 30%}
""" + TOP_ZERO


TINY = '''
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.head = nn.Linear(4, 4)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(4)); self.hidden.bias.zero_()
            self.head.weight.copy_(torch.eye(4)); self.head.bias.copy_(torch.tensor([0, 0, 0, 0.5]))
            self.unused.weight.fill_(0.1); self.unused.bias.zero_()  # the same in every run

    def forward(self, x):
        return self.head(self.hidden(x))

def model():
    return Tiny().eval()

def data():
    labels = torch.arange(4).repeat(10)
    return [(torch.eye(4)[labels[i:i + 8]], labels[i:i + 8]) for i in range(0, 40, 8)]

def nan_model():
    m = Tiny().eval()
    with torch.no_grad():
        m.head.bias[0] = float("nan")
    return m

def broken():
    raise RuntimeError("checkpoint missing")
'''

# Data that cannot be paired across passes (issue: pairing is verified, never assumed).
PAIRING = '''
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import tinymodel

def _tensors():
    labels = torch.arange(4).repeat(10)
    return torch.eye(4)[labels], labels

def shuffled():
    return DataLoader(TensorDataset(*_tensors()), batch_size=8, shuffle=True)

def one_shot():
    return (batch for batch in tinymodel.data())

class Jittered:
    """Re-iterable, but every pass adds fresh numpy noise: passes never agree."""
    def __iter__(self):
        rng = np.random.default_rng()
        for x, y in tinymodel.data():
            yield x + torch.from_numpy(rng.normal(0, 1e-3, x.shape)).float(), y

def jittered():
    return Jittered()
'''

# Models whose output is not one logits tensor (the spec's output: key).
OUTPUTS = '''
from tinymodel import Tiny

class Pair(Tiny):
    def forward(self, x):
        h = self.hidden(x)
        return h, self.head(h)

class Named(Tiny):
    def forward(self, x):
        h = self.hidden(x)
        return {"features": h, "scores": self.head(h)}

def pair():
    return Pair().eval()

def named():
    return Named().eval()
'''

# A model that is not 100% accurate at baseline: examples 0-1 of every batch of class zero
# carry class one's input (they are labelled zero and predicted one).
IMPERFECT = '''
import torch

def data():
    labels = torch.arange(4).repeat(10)
    inputs = torch.eye(4)[labels]
    inputs[0:8:4] = torch.eye(4)[1]   # two class-zero examples look like class one
    return [(inputs[i:i + 8], labels[i:i + 8]) for i in range(0, 40, 8)]
'''
