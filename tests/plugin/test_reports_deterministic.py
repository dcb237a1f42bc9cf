"""The same spec on the same model and data writes the same report, byte for byte: two
serial runs, and a serial run and a ``-n 2`` run (the JSON report and the HTML page; what
this run measured about itself, such as the scan engines' plans chosen by timing, goes to
the run file beside the report, which is not compared)."""

from __future__ import annotations

import json

import pytest
from tiny_source import IMPERFECT, spec

pytest_plugins = ["pytester"]

HEAD = """\
unitablate: 1
model: tinymodel:model
data: imperfect:data
classes: [zero, one, two, three]
"""

BODY = """\
checks:
  - layer: hidden
    units: [1]
    expect:
      one: {min_drop: 90%}
      overall: {max_drop: 10%}
  - layer: hidden
    any_unit:
      expect:
        two: {min_drop: 90%}
  - layer: hidden
    every_unit:
      expect:
        overall: {max_drop: 20%}
  - layer: hidden
    top_units:
      k: 2
      class: zero
      expect:
        zero: {min_drop: 50%}
"""


@pytest.mark.requires_xdist
def test_two_serial_runs_and_an_xdist_run_write_the_same_bytes(tiny: pytest.Pytester) -> None:
    tiny.makepyfile(imperfect=IMPERFECT)
    spec(tiny, BODY, head=HEAD)
    outputs = {}
    for name, extra in (("serial", ()), ("again", ()), ("xdist", ("-n", "2"))):
        result = tiny.runpytest_subprocess(
            "--unitablate-spec", "spec.yaml", "-p", "no:randomly", "--unitablate-cache=off",
            "--unitablate-report", f"{name}.json", "--unitablate-html", f"{name}.html",
            *extra)
        result.assert_outcomes(passed=3, failed=2)
        outputs[name] = ((tiny.path / f"{name}.json").read_bytes(),
                         (tiny.path / f"{name}.html").read_bytes())
        run = json.loads((tiny.path / f"{name}.run.json").read_text())
        assert {e["layer"] for e in run["engines"]} == {"hidden"}
    assert outputs["serial"] == outputs["again"] == outputs["xdist"]
    items = json.loads(outputs["serial"][0])["items"]
    assert "engine_plan" not in items[0] and len(items) == 5
