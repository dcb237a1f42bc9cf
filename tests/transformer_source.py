"""A small transformer the engine and plugin tests write into their temporary folders.

``tinyvit.model()`` is a classifier over 6 tokens of width 16: a linear embedding, two
``nn.TransformerEncoderLayer`` s (4 heads of 4, batch first, an MLP of 32 neurons) and a
read-out of token 0. Random weights, seeded; the labels of ``tinyvit.data()`` are the
model's own predictions with every fifth flipped (not 100% right at baseline), so every
head and neuron that changes predictions costs accuracy.
"""

SOURCE = '''
import torch
from torch import nn


class TinyViT(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(3, 16)
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x))[:, 0])


def model():
    return TinyViT().eval()


def _inputs():
    return torch.randn(96, 6, 3, generator=torch.Generator().manual_seed(1))


def data():
    x = _inputs()
    with torch.no_grad():
        y = TinyViT().eval()(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
'''

#: A model with a Hugging Face-style attention module: separate q/k/v/o projections, the
#: head count on the attention module (``num_heads``); ``hfattn.model()``, same data.
HF_SOURCE = '''
import math

import torch
from torch import nn

import tinyvit


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.num_heads, self.head_dim = 4, 4
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(16, 16) for _ in range(3))
        self.o_proj = nn.Linear(16, 16)

    def forward(self, x):
        n, t, _ = x.shape
        split = lambda p: p(x).view(n, t, 4, 4).transpose(1, 2)
        q, k, v = split(self.q_proj), split(self.k_proj), split(self.v_proj)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
        return self.o_proj((att @ v).transpose(1, 2).reshape(n, t, 16))


class HFModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.embed = nn.Linear(3, 16)
        self.attn = Attention()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = self.embed(x)
        return self.head((h + self.attn(h))[:, 0])


def model():
    return HFModel().eval()


def data():
    x = tinyvit._inputs()
    with torch.no_grad():
        y = HFModel().eval()(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
'''

#: A sequence-first transformer (``batch_first=False``): its blocks output ``(T, N, C)``,
#: the batch on dimension 1. ``seqfirst.model()``, the tiny ViT's data.
SEQ_SOURCE = '''
import torch
from torch import nn

import tinyvit


class SeqFirst(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Linear(3, 16)
        self.block = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0)
        self.head = nn.Linear(16, 4)

    def forward(self, x):                        # x: (N, T, 3)
        h = self.block(self.embed(x).transpose(0, 1))   # (T, N, 16)
        return self.head(h[0])


def model():
    return SeqFirst().eval()


def data():
    x = tinyvit._inputs()
    with torch.no_grad():
        y = SeqFirst().eval()(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
'''
