"""Unit attributes against brute-force numpy, and correlations against scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from numerics import assert_f32_close
from scipy import stats
from torch import nn

from pytest_unitablate.analysis.attributes import (
    attribute_correlations,
    unit_attributes,
    write_table,
)


class Hand(nn.Module):
    """conv (3 units) on a one-channel image; unit 0 fires only for class 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 0.5, -2.0]).view(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


def test_selectivity_and_statistics_equal_brute_force() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    x = torch.rand(6, 1, 3, 3) * labels.view(6, 1, 1, 1).float()  # class 0 images are black
    model = Hand()
    attrs = unit_attributes(model, (x, labels), "relu", next_layer="fc")
    act = model.relu(model.conv(x)).detach().numpy()  # (6, 3, 3, 3)
    pooled = act.mean(axis=(2, 3))
    mu = np.stack([pooled[labels.numpy() == k].mean(0) for k in (0, 1)])
    sel = (mu.max(0) - mu.min(0)) / (mu.max(0) + mu.min(0) + 1e-6)  # two classes: rest = min
    assert_f32_close(attrs["selectivity"], sel, terms=64, depth=4)
    assert attrs["selectivity"][0] == pytest.approx(1.0, abs=1e-5)  # only class 1 fires it
    assert attrs["selectivity"][2] == pytest.approx(0.0, abs=1e-6)  # never fires
    assert_f32_close(attrs["selectivity_1"], (mu[1] - mu[0]) / (mu[1] + mu[0] + 1e-6),
                     terms=64, depth=4)
    assert_f32_close(attrs["mean_activation"], act.mean(axis=(0, 2, 3)), terms=64, depth=2)
    np.testing.assert_allclose(attrs["sparsity"], (act <= 0).mean(axis=(0, 2, 3)))
    assert np.isnan(attrs["l1_in"]).all()  # a ReLU has no weights
    np.testing.assert_allclose(attrs["l1_out"], model.fc.weight.abs().sum(0).detach().numpy())
    conv = unit_attributes(model, (x, labels), "conv")
    np.testing.assert_allclose(conv["l1_in"], [1.0, 0.5, 2.0])
    assert all(not m._forward_hooks for m in model.modules())


def test_correlations_equal_scipy(tmp_path: object) -> None:
    rng = np.random.default_rng(0)
    attrs = pd.DataFrame({"unit": range(8), "selectivity": rng.random(8),
                          "l1_in": rng.random(8), "selectivity_0": rng.random(8),
                          "selectivity_1": rng.random(8)})
    rows = []
    for u in range(8):
        rows.append({"unit": u, "target": "overall", "n": 10, "baseline": 0.9,
                     "ablated": 0.8, "drop": float(rng.random())})
        for k in (0, 1):
            rows.append({"unit": u, "target": k, "n": 5, "baseline": 0.9, "ablated": 0.5,
                         "drop": float(rng.random())})
    drops = pd.DataFrame(rows)
    corr = attribute_correlations(attrs, drops).set_index(["attribute", "against"])
    overall = drops[drops.target == "overall"]["drop"].to_numpy()
    r = stats.pearsonr(attrs["selectivity"], overall)
    assert corr.loc[("selectivity", "overall drop"), "pearson"] == pytest.approx(r[0])
    maxc = drops[drops.target != "overall"].groupby("unit")["drop"].max().to_numpy()
    s = stats.spearmanr(attrs["l1_in"], maxc)
    assert corr.loc[("l1_in", "max class drop"), "spearman"] == pytest.approx(s[0])
    assert corr.loc[("per-class selectivity", "drop of that class"), "n"] == 16
    out = f"{tmp_path}/c.csv"
    write_table(corr.reset_index(), out)
    assert pd.read_csv(out).shape[0] == corr.shape[0]
