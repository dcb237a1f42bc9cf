"""``any_unit`` checks stop once their outcome is decided, with the outcome a full sweep
gives; ``every_unit`` checks, whose passing outcome needs every unit, sweep the layer.

The wide model: ``hidden`` has 32 units; unit 8k+5 alone carries class k to the logits (the
others reach no logit), and the head's bias makes class three win whenever its carrier is
gone. Two class-zero examples show class one's input, so the model is 90% right on zero.
"""

from __future__ import annotations

import json

import pytest
from tiny_source import spec

WIDE = '''
import torch
from torch import nn

class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 32)
        self.head = nn.Linear(32, 4)
        with torch.no_grad():
            w = torch.tensor([[0.01 * ((u * 7 + k * 3) % 5) for k in range(4)]
                              for u in range(32)])
            for k in range(4):
                w[8 * k + 5] = torch.eye(4)[k]
            self.hidden.weight.copy_(w); self.hidden.bias.zero_()
            self.head.weight.zero_(); self.head.bias.copy_(torch.tensor([0, 0.1, 0.2, 0.3]))
            for k in range(4):
                self.head.weight[k, 8 * k + 5] = 1.0

    def forward(self, x):
        return self.head(torch.relu(self.hidden(x)))

def model():
    return Wide().eval()

def data():
    labels = torch.arange(4).repeat(10)
    inputs = torch.eye(4)[labels]
    inputs[[0, 4]] = torch.eye(4)[1]        # two class-zero examples look like class one
    return [(inputs[i:i + 8], labels[i:i + 8]) for i in range(0, 40, 8)]
'''

HEAD = "unitablate: 1\nmodel: wide:model\ndata: wide:data\nclasses: [zero, one, two, three]\n"
BODY = """\
checks:
  - layer: hidden
    any_unit:
      expect:
        two: {min_drop: 90%}        # unit 21: decided by the first unit tried
        three: {min_drop: 50%}      # no unit: needs every unit to fail
  - layer: hidden
    every_unit:
      expect:
        overall: {max_drop: 10%}    # units 5, 13, 21 break it: the worst of all decides
        one: {max_drop: 100%}       # every unit passes: needs every unit
"""


def _items(pytester: pytest.Pytester, *args: str) -> dict[str, dict[str, object]]:
    result = pytester.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report",
                                "r.json", *args)
    result.assert_outcomes(passed=2, failed=2)
    return {i["id"]: i for i in json.loads((pytester.path / "r.json").read_text())["items"]}


def test_layer_wide_checks_stop_once_decided_with_the_full_sweeps_outcomes(
        tiny: pytest.Pytester) -> None:
    tiny.makepyfile(wide=WIDE)
    spec(tiny, BODY, head=HEAD)
    early = _items(tiny, "--unitablate-cache=off")
    full = _items(tiny, "--unitablate-cache=off", "--unitablate-full-sweeps")
    assert {k: v["outcome"] for k, v in early.items()} == \
        {k: v["outcome"] for k, v in full.items()}
    evaluated = {k: v["units_evaluated"] for k, v in early.items()}
    # any_unit: the first unit tried decides a pass, a failure needs the rest (one more
    # sweep); every_unit sweeps the whole layer at once
    assert evaluated == {"hidden-any-two-min_drop": 1, "hidden-any-three-min_drop": 32,
                         "hidden-every-overall-max_drop": 32, "hidden-every-one-max_drop": 32}
    assert all(v["units_evaluated"] == v["units_total"] == 32 for v in full.values())
    assert early["hidden-any-two-min_drop"]["deciding_units"] == [21]
    # every_unit names the worst of all 32 units, unit 13 (class one's carrier: 10 of 40
    # examples), as the full sweep does
    assert early["hidden-every-overall-max_drop"]["deciding_units"] == [13]
    assert full["hidden-every-overall-max_drop"]["deciding_units"] == [13]


def test_an_every_unit_failure_names_every_unit_that_misses_it(tiny: pytest.Pytester) -> None:
    tiny.makepyfile(wide=WIDE)
    spec(tiny, BODY, head=HEAD)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "-k", "every-overall")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*deciding unit: 13", "  3 of 32 units miss it: [[]5, 13, 21[]]"])
    result.stdout.no_fnmatch_line("*stopped early*")


def test_record_mode_sweeps_every_unit(tiny: pytest.Pytester) -> None:
    tiny.makepyfile(wide=WIDE)
    spec(tiny, BODY, head=HEAD)
    tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report", "r.json",
                   "--unitablate-record-mode=all")
    items = json.loads((tiny.path / "r.json").read_text())["items"]
    assert {i["units_evaluated"] for i in items} == {32}


@pytest.mark.slow
@pytest.mark.requires_xdist
@pytest.mark.parametrize("sweeps", [(), ("--unitablate-full-sweeps",)])
def test_workers_sharing_sweeps_in_pieces_report_what_serial_does(
        tiny: pytest.Pytester, sweeps: tuple[str, ...]) -> None:
    """Two workers need the same 32-unit sweep: they split it into pieces of 8."""
    tiny.makepyfile(wide=WIDE)
    spec(tiny, BODY, head=HEAD)
    runs = {}
    for name, extra in (("serial", ()), ("xdist", ("-n", "2", "--cache-clear"))):
        result = tiny.runpytest_subprocess("--unitablate-spec", "spec.yaml", "-p",
                                           "no:randomly", "--unitablate-report",
                                           f"{name}.json", *sweeps, *extra)
        result.assert_outcomes(passed=2, failed=2)
        run = json.loads((tiny.path / f"{name}.run.json").read_text())
        for engine in run["engines"]:  # timed on this machine: it may differ
            assert engine["plan"] is None or "per suffix pass" in engine["plan"]
        runs[name] = (tiny.path / f"{name}.json").read_bytes()
    assert runs["serial"] == runs["xdist"]
    pieces = list((tiny.path / ".pytest_cache" / "d" / "unitablate").glob("*.npz"))
    assert pieces


def test_where_a_check_stops_does_not_depend_on_what_ran_before(tiny: pytest.Pytester) -> None:
    """A top_units check sweeps the whole layer first; the any_unit item after it still
    stops where it stops alone (the JSON report is the same in any item order)."""
    tiny.makepyfile(wide=WIDE)
    top_first = ("checks:\n  - layer: hidden\n    top_units:\n      k: 1\n      class: two\n"
                 "      expect:\n        two: {min_drop: 90%}\n"
                 + BODY.removeprefix("checks:\n"))
    spec(tiny, top_first, head=HEAD)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report", "r.json")
    result.assert_outcomes(passed=3, failed=2)
    items = {i["id"]: i for i in json.loads((tiny.path / "r.json").read_text())["items"]}
    assert items["hidden-any-two-min_drop"]["units_evaluated"] == 1
    assert items["hidden-every-overall-max_drop"]["units_evaluated"] == 32
