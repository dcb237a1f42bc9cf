"""A small MLP whose units have known roles, for ``identity: signature`` tests.

``idmodel.model()`` maps noisy one-hot inputs of 4 classes through 6 hidden units, hidden
unit k detecting class k (k < 4), so the baseline is not 100% right. Its variants, by
argument or environment variable (the plugin tests run it in a pytest subprocess):
``permute`` (``PERMUTE=1``) reorders the hidden units (the same function, other indices:
what a retrain does to unit identity; new position i holds old unit ``PERM[i]``);
``destroy`` (``DESTROY=1``) moves class one's evidence to the output bias, so no hidden
unit carries it; ``prune`` (``PRUNE=1``) sets unit 1 to a constant 0 and gives some of
class one to unit 4; ``prune2`` (``PRUNE2=1``) prunes units 1 and 2 alike (units 4 and 5
take some of classes one and two). ``idmodel.data()``: 120 examples in 3 batches.
"""

SOURCE = '''
import os
import torch
from torch import nn

PERM = [3, 0, 5, 1, 4, 2]          # new position i holds old unit PERM[i]


def _flag(name, value):
    return os.environ.get(name) == "1" if value is None else value


def model(permute=None, destroy=None, prune=None, prune2=None):
    """Each variant from its argument, or else from the environment (PERMUTE=1, ...)."""
    g = torch.Generator().manual_seed(0)
    w1 = torch.zeros(6, 4)
    w1[:4, :4] = 2.0 * torch.eye(4)
    w1[4:] = 0.3 * torch.rand(2, 4, generator=g)
    w2 = torch.zeros(4, 6)
    w2[:, :4] = torch.eye(4)
    w2[:, 4:] = 0.1
    b2 = torch.zeros(4)
    if _flag("DESTROY", destroy):
        w1[1] = 0.0                                # unit 1 detects nothing any more
        w2[1] = 0.0                                # and class one wins on its bias alone
        b2[1] = 0.9
    if _flag("PRUNE", prune):                      # unit 1 pruned to a constant 0, and
        w1[4] = 0.8 * w1[1]                        # unit 4 now carries some of class one
        w2[:, 4] = w2[:, 1]
        w1[1] = 0.0
        w2[:, 1] = 0.0
    if _flag("PRUNE2", prune2):                    # units 1 and 2 pruned to a constant 0;
        for dead, heir in ((1, 4), (2, 5)):        # units 4 and 5 take some of their classes
            w1[heir] = 0.8 * w1[dead]
            w2[:, heir] = w2[:, dead]
            w1[dead] = 0.0
            w2[:, dead] = 0.0
    if _flag("PERMUTE", permute):
        w1, w2 = w1[PERM], w2[:, PERM]
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4))
    with torch.no_grad():
        net[0].weight.copy_(w1); net[0].bias.zero_()
        net[2].weight.copy_(w2); net[2].bias.copy_(b2)
    return net.eval()


def data():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(4).repeat(30)
    x = torch.nn.functional.one_hot(labels, 4).float() + 0.45 * torch.randn(120, 4, generator=g)
    return [(x[i:i + 40], labels[i:i + 40]) for i in range(0, 120, 40)]
'''
