"""A ``min_*`` drop the target's baseline cannot reach: a forgotten class (judged, and
failed as forgotten) or too few examples for the bound asked (a spec problem that asks
for more examples), and a class with fewer examples than ``min_examples``.

The model reads a one-hot input straight through (``hidden``, ``act``, ``head`` are
identities, and class one has a small bias), so the labels alone decide which examples
are right at baseline, and ablating unit 0 loses every right example of class 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pytest_unitablate import run_spec


class OneHot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.act, self.head = nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3)
        with torch.no_grad():
            for linear in (self.hidden, self.head):
                linear.weight.copy_(torch.eye(3))
                linear.bias.zero_()
            self.head.bias[1] = 0.1  # a unit ablated to zero: class one wins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.hidden(x)))  # type: ignore[no-any-return]


def _run(tmp_path: Path, right: int, constraint: str, head: str = "") -> Any:
    """Class 0 has four examples, ``right`` of them right at baseline; classes 1 and 2
    twenty each, all right. Unit 0 of ``act`` is ablated."""
    shown = [0] * right + [1] * (4 - right) + [1] * 20 + [2] * 20
    labels = torch.tensor([0] * 4 + [1] * 20 + [2] * 20)
    path = tmp_path / "s.yaml"
    path.write_text(f"unitablate: 1\nmodel: model\ndata: data\n{head}checks:\n"
                    f"  - layer: act\n    units: [0]\n    expect:\n      0: {constraint}\n")
    (item,) = run_spec(path, fixtures={"model": OneHot().eval(),
                                       "data": (torch.eye(3)[shown], labels)}).items
    return item


@pytest.mark.parametrize(("constraint", "bound"), [
    # losing the one right example is a 100% relative drop, and exactly the 25 pp asked
    ("{min_relative_drop: 50%, confidence: 95%}", "-112.3, below the required 50.0"),
    ("{min_drop: 25%, confidence: 95%}", "-28.1, below the required 25.0"),
])
def test_a_reachable_drop_that_four_examples_cannot_bound_is_the_specs_problem(
        tmp_path: Path, constraint: str, bound: str) -> None:
    """The class is not forgotten (losing its one right example reaches the drop); four
    examples cannot support the 95% bound asked, which the spec must fix."""
    item = _run(tmp_path, 1, constraint)
    assert item.outcome == "failed" and not item.record.get("forgotten")
    assert str(item.message).endswith(
        f": the target has 4 example(s), 1 right at baseline; even if every one were lost, "
        f"the 95% lower bound would be {bound}. Use more examples or a lower threshold."
        ), item.message
    assert "s.yaml:8: act-u0-class0-min_" in str(item.message), item.message


@pytest.mark.parametrize(("right", "constraint"), [
    (0, "{min_relative_drop: 50%, confidence: 95%}"),  # none right: no relative drop at all
    (1, "{min_drop: 50%}"),  # losing the one right example is 25 pp
])
def test_a_drop_out_of_the_baselines_reach_is_a_forgotten_class(
        tmp_path: Path, right: int, constraint: str) -> None:
    item = _run(tmp_path, right, constraint)
    assert item.outcome == "failed" and item.record["forgotten"] is True
    assert f"forgotten: {right} of 4 right at baseline" in str(item.message), item.message


def test_a_drop_the_baseline_just_reaches_is_judged(tmp_path: Path) -> None:
    """25 pp is what losing the one right example of four gives: reachable, so judged
    (unit 0 carries class 0, so its one right example is lost and the check passes)."""
    item = _run(tmp_path, 1, "{min_drop: 25%}")
    assert item.outcome == "passed" and not item.record.get("forgotten"), item.message


def test_a_class_with_fewer_examples_than_min_examples_is_located_at_the_item(
        tmp_path: Path) -> None:
    item = _run(tmp_path, 4, "{max_drop: 100%}", head="min_examples: 5\n")
    assert str(item.message).endswith(
        "s.yaml:9: class 0 has 4 example(s) in the evaluation data; the spec needs at "
        "least 5 (min_examples)"), item.message
    assert _run(tmp_path, 4, "{max_drop: 100%}", head="min_examples: 4\n").outcome == "passed"


def test_a_baseline_at_chance_everywhere_is_in_the_record_and_warned_once(
        tmp_path: Path) -> None:
    """Every example shown as another class than its label: every class at 0% (chance is
    33%). Each item's record says ``at_chance`` (a JUnit property under xunit1); the run
    warns once for the spec. The same model on right labels is not at chance."""
    labels = torch.tensor([0, 1, 2] * 8)
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\nchecks:\n  - layer: act\n"
                    "    units: [0]\n    expect:\n      overall: {max_drop: 100%}\n"
                    "      1: {max_drop: 100%}\n")
    for shown, at_chance in (((labels + 1) % 3, True), (labels, False)):
        run = run_spec(path, fixtures={"model": OneHot().eval(),
                                       "data": (torch.eye(3)[shown], labels)})
        assert [item.record["at_chance"] for item in run.items] == [at_chance] * 2
        warned = [w for item in run.items for w in item.warnings]
        assert len(warned) == at_chance and all(
            "every class is at or below chance at baseline" in w for w in warned), warned
