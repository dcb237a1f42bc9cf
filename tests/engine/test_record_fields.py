"""Record fields the review page and the report read, made where the engine makes them:
the checkpoint a model's fixture names, and the per-class damage (or, for a vocabulary,
only the overall drop)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pytest_unitablate import run_spec
from pytest_unitablate.engine.baselines import checkpoint_of


def test_the_checkpoint_is_read_from_the_model_or_the_model_it_wraps() -> None:
    inner = nn.Linear(2, 2)
    inner.unitablate_checkpoint = Path("ckpt") / "best.pt"  # type: ignore[assignment]
    assert checkpoint_of(inner) == str(Path("ckpt") / "best.pt")
    for attribute in ("module", "model"):
        wrapper = nn.Module()
        setattr(wrapper, attribute, inner)
        assert checkpoint_of(wrapper) == str(Path("ckpt") / "best.pt")
    own = nn.Sequential(inner)
    own.unitablate_checkpoint = "outer.pt"  # type: ignore[assignment]
    assert checkpoint_of(own) == "outer.pt"
    assert checkpoint_of(nn.Linear(2, 2)) is None


class Wide(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@pytest.mark.parametrize("classes", [3, 300])
def test_the_damage_of_every_class_or_of_a_vocabulary_only_overall(
        tmp_path: Path, classes: int) -> None:
    model = Wide(classes).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 6, generator=g)
    with torch.no_grad():
        labels = model(x).argmax(1)
    labels[::4] = (labels[::4] + 1) % classes  # not 100% right at baseline
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""\
        unitablate: 1
        model: model
        data: data
        checks:
          - layer: act
            units: [0, 1, 2, 3]
            expect: {overall: {max_drop: 100%}}
        """))
    run = run_spec(path, fixtures={"model": model, "data": (x, labels)})
    record = run.items[0].record
    correct = (model(x).argmax(1) == labels).numpy()
    with torch.no_grad():
        model.fc1.weight[:4] = 0.0
        model.fc1.bias[:4] = 0.0
        after = (model(x).argmax(1) == labels).numpy()
    overall = float(correct.mean() - after.mean())
    assert record["overall_drop"] == pytest.approx(overall, abs=1e-9)
    assert record["drop"] == pytest.approx(overall, abs=1e-9)
    if classes > 256:  # a language model's vocabulary: no per-class heatmap
        assert record["class_drops"] is None
        return
    lab = labels.numpy()
    expected = [float(correct[lab == k].mean() - after[lab == k].mean())
                if (lab == k).any() else None for k in range(classes)]
    assert record["class_drops"] == pytest.approx(expected, abs=1e-9)
    assert any(d is not None and d != 0 for d in record["class_drops"])
    assert np.isfinite(overall)


@pytest.mark.parametrize("ranking", [False, True])
def test_a_top_units_failure_says_which_data_ranked_the_units(tmp_path: Path,
                                                             ranking: bool) -> None:
    model = Wide(3).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(60, 6, generator=g)
    with torch.no_grad():
        labels = model(x).argmax(1)
    labels[::5] = (labels[::5] + 1) % 3
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(f"""\
        unitablate: 1
        model: model
        data: data
        {"ranking_data: ranking" if ranking else ""}
        checks:
          - layer: act
            top_units:
              k: 2
              class: 1
              expect: {{1: {{min_drop: 100%}}}}
        """))
    fixtures = {"model": model, "data": (x, labels), "ranking": (x[:30], labels[:30])}
    item = run_spec(path, fixtures=fixtures).items[0]
    assert item.outcome == "failed" and item.message is not None
    source = "the ranking_data split" if ranking else "the evaluation data (no ranking_data)"
    assert f"  units ranked by their drop of 1 on {source}" in item.message.splitlines()
