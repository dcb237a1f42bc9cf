"""Through pytest: a layer-wide check runs the network before its layer once, in the
baseline pass (the session's prefix cache), and its outcome does not depend on that."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_source import spec

COUNTED = '''
import torch
from torch import nn

class Counted(nn.Module):
    """Writes how many examples each call of its first layer sees to seen.txt."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(4, 6)
        self.hidden = nn.Linear(6, 12)
        self.head = nn.Linear(12, 4)
        self.stem.register_forward_hook(self._count)

    @staticmethod
    def _count(module, args, out):
        with open("seen.txt", "a") as f:
            f.write(f"{args[0].shape[0]}\\n")

    def forward(self, x):
        return self.head(torch.relu(self.hidden(torch.relu(self.stem(x)))))

def model():
    return Counted().eval()

def ranking():  # another split, in batches of 18
    g = torch.Generator().manual_seed(2)
    inputs = torch.randn(36, 4, generator=g)
    labels = torch.arange(36) % 4
    return [(inputs[i:i + 18], labels[i:i + 18]) for i in range(0, 36, 18)]

def data():
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(40, 4, generator=g)
    with torch.no_grad():  # (a pass of 40 examples: not a batch of 20)
        labels = Counted().eval()(inputs).argmax(1)
    labels[::5] = (labels[::5] + 1) % 4  # not 100% right at baseline
    return [(inputs[i:i + 20], labels[i:i + 20]) for i in range(0, 40, 20)]
'''

HEAD = "unitablate: 1\nmodel: counted:model\ndata: counted:data\n"
BODY = """\
checks:
  - layer: hidden
    any_unit:
      expect:
        overall: {min_drop: 0%}
  - layer: hidden
    every_unit:
      expect:
        overall: {max_drop: 0%}
"""


def _seen(pytester: pytest.Pytester, *args: str) -> tuple[int, dict[str, object]]:
    seen = Path(pytester.path / "seen.txt")
    seen.unlink(missing_ok=True)
    result = pytester.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-cache=off",
                                "--unitablate-report", "r.json", *args)
    result.assert_outcomes(passed=1, failed=1)
    items = json.loads((pytester.path / "r.json").read_text())["items"]
    outcomes = {i["id"]: (i["outcome"], i["units_evaluated"]) for i in items}
    # whole batches of 20 (the checks of a split run on 16 examples, probes on 2)
    return sum(int(n) == 20 for n in seen.read_text().split()), outcomes


def test_the_layer_prefix_runs_once_for_the_baseline_order_and_chunks(
        tiny: pytest.Pytester) -> None:
    tiny.makepyfile(counted=COUNTED)
    spec(tiny, BODY, head=HEAD)
    shared, outcomes = _seen(tiny)
    alone, outcomes_alone = _seen(tiny, "--unitablate-memory-budget=1")  # nothing kept
    assert outcomes == outcomes_alone
    # 40 examples in the baseline; beside it only probes and checks on a few examples
    assert shared == 2, shared  # the two batches of the baseline pass, nothing after it
    # without the cache: the baseline, the unit order and the chunk each run both batches
    assert alone >= 6, alone


def test_top_units_keeps_its_prefix_from_the_ranking_baseline_only(
        tiny: pytest.Pytester) -> None:
    tiny.makepyfile(counted=COUNTED)
    top = ("checks:\n  - layer: hidden\n    top_units:\n      k: 2\n      class: 1\n"
           "      expect:\n        overall: {max_drop: 100%}\n")
    spec(tiny, top, head=HEAD + "ranking_data: counted:ranking\n")
    seen = Path(tiny.path / "seen.txt")
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-cache=off")
    result.assert_outcomes(passed=1)
    calls = [int(n) for n in seen.read_text().split()]
    assert calls.count(18) == 2  # the ranking split's baseline; its sweep read the cache


NAMED = """\
checks:
  - layer: hidden
    units: [0]
    expect:
      overall: {max_drop: 0%}
  - layer: hidden
    units: [3, 7]
    expect:
      overall: {max_drop: 1%}
  - layer: hidden
    units: [11]
    expect:
      overall: {min_drop: 50%}
"""


def test_named_checks_of_a_layer_are_one_scan_with_the_plain_passes_outcomes(
        tiny: pytest.Pytester) -> None:
    """Three named checks of one layer: grouped, the network before the layer sees only
    the baseline's two batches (the prefix kept, the rows in suffix passes); with
    --unitablate-plain-passes every check runs both batches again. Same records."""
    tiny.makepyfile(counted=COUNTED)
    spec(tiny, NAMED, head=HEAD)
    seen = Path(tiny.path / "seen.txt")
    reports = {}
    batches = {}
    for mode, extra in (("grouped", []), ("plain", ["--unitablate-plain-passes"])):
        seen.unlink(missing_ok=True)
        result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-cache=off",
                                "--unitablate-report", f"{mode}.json", *extra)
        result.assert_outcomes(passed=2, failed=1)
        batches[mode] = sum(int(n) == 20 for n in seen.read_text().split())
        reports[mode] = json.loads((tiny.path / f"{mode}.json").read_text())["items"]
    assert reports["grouped"] == reports["plain"]
    assert batches == {"grouped": 2, "plain": 2 + 3 * 2}
