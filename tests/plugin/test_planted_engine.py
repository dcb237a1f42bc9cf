"""Bug classes a user would not see, through real runs (each test fails when its bug is
planted): store keys that forget the ablation kind or the layer, record mode ``failed``
skipping null thresholds (and with them the never-disarm guard), passes not seeded."""

from __future__ import annotations

import json

import pytest
from tiny_source import HEAD, spec

pytest_plugins = ["pytester"]


def _items(p: pytest.Pytester, *args: str) -> dict[str, dict[str, object]]:
    p.runpytest("--unitablate-spec", "spec.yaml", "-p", "no:randomly",
                "--unitablate-report", "r.json", *args)
    return {i["id"]: i for i in json.loads((p.path / "r.json").read_text())["items"]}


def test_a_constant_sweep_never_reads_the_zero_sweep_of_its_layer(
        tiny: pytest.Pytester) -> None:
    """Zero ablation of unit 2 hurts class two, a constant of 10 on any *other* unit does
    (everything is then predicted as that unit's class): two sweeps of one layer that
    differ only in the ablation decide on different units, with the store on or off."""
    spec(tiny, """\
checks:
  - layer: hidden
    any_unit:
      expect:
        two: {min_drop: 90%}
  - layer: hidden
    ablation: {constant: 10}
    any_unit:
      expect:
        two: {min_drop: 90%}
""")
    stored = _items(tiny, "--unitablate-full-sweeps")
    plain = _items(tiny, "--unitablate-full-sweeps", "--unitablate-cache=off")
    assert stored == plain
    assert stored["hidden-any-two-min_drop"]["deciding_units"] == [2]
    assert stored["hidden-any:const10-two-min_drop"]["deciding_units"] == [0]


TWO_LAYERS = '''
import torch
from torch import nn


class TwoLayers(nn.Module):
    """``first``'s unit k carries class k; ``second`` copies ``first`` but its unit 2
    stays 0 (class two reaches the logits past it), so ablating it changes nothing."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 4)
        with torch.no_grad():
            self.first.weight.copy_(torch.eye(4)); self.first.bias.zero_()
            self.second.weight.copy_(torch.diag(torch.tensor([1.0, 1.0, 0.0, 1.0])))
            self.second.bias.zero_()
        self.register_buffer("skip", torch.tensor([0.0, 0.0, 1.0, 0.0]))

    def forward(self, x):
        h = self.first(x)
        return self.second(h) + h * self.skip + torch.tensor([0.0, 0.0, 0.0, 0.5])


def model():
    return TwoLayers().eval()
'''


def test_unit_2_of_one_layer_never_reads_unit_2_of_another(tiny: pytest.Pytester) -> None:
    tiny.makepyfile(twolayers=TWO_LAYERS)
    spec(tiny, """\
checks:
  - layer: first
    units: [2]
    expect:
      two: {min_drop: 90%}
  - layer: second
    units: [2]
    expect:
      two: {max_drop: 1%}
""", head=HEAD.replace("tinymodel:model", "twolayers:model"))
    for args in ((), ("--unitablate-plain-passes",)):  # grouped and plain passes alike
        items = _items(tiny, *args)
        assert items["first-u2-two-min_drop"]["drop"] == 1.0
        assert items["second-u2-two-max_drop"]["drop"] == 0.0
        assert {i["outcome"] for i in items.values()} == {"passed"}


def test_record_mode_failed_fills_null_thresholds_and_never_disarms(
        tiny: pytest.Pytester) -> None:
    """``failed`` rewrites failing thresholds *and* fills null ones (their items still
    fail, as failing ones do in this mode); a null min_drop of a unit without effect
    (unit 3 on class one) would become a threshold that cannot fail, and is refused, the
    spec left as it was on that line."""
    path = spec(tiny, """\
checks:
  - layer: hidden
    units: [1]
    expect:
      one: {min_drop: null}
  - layer: hidden
    units: [3]
    expect:
      one: {min_drop: null}
""")
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "-p", "no:randomly",
                            "--unitablate-record-mode=failed")
    result.assert_outcomes(failed=2)
    text = path.read_text()
    assert "one: {min_drop: null}" in text  # unit 3's: not written
    assert text.count("min_drop: null") == 1  # unit 1's: filled
    result.stdout.fnmatch_lines(["*1 threshold(s) recorded/updated*",
                                 "*1 threshold(s) NOT recorded*", "*hidden-u3-one-min_drop"])


SEEDED = '''
import torch

import tinymodel


class Augmented:
    """Re-iterable; every pass adds noise from torch's global generator (seeded by the
    plugin before every pass, so every pass replays the same examples)."""

    def __iter__(self):
        for x, y in tinymodel.data():
            yield x + 0.01 * torch.randn(x.shape), y


def data():
    return Augmented()
'''


def test_seeded_augmentation_pairs_because_every_pass_is_seeded(tiny: pytest.Pytester) -> None:
    tiny.makepyfile(seeded=SEEDED)
    spec(tiny, """\
checks:
  - layer: hidden
    units: [1]
    expect:
      one: {min_drop: 90%}
  - layer: hidden
    every_unit:
      expect:
        overall: {max_drop: 30%}
""", head=HEAD.replace("tinymodel:data", "seeded:data"))
    for args in ((), ("--unitablate-cache=off",)):
        result = tiny.runpytest("--unitablate-spec", "spec.yaml", *args)
        result.assert_outcomes(passed=2)
