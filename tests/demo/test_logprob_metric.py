"""``min_logprob_drop`` on the demo CNNs equals an independent computation.

The independent side shares nothing with the engine: a plain forward hook zeroes the
channel, ``log_softmax`` in float64 gives each example's log p(true class), and scipy
gives Student's t interval and the paired t-test. The engine's side runs the spec through
``run_spec`` (grouped named checks, a layer sweep through the scan engines).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from pytest_unitablate import run_spec
from unitablate_demo import fixtures

CASES = {"resnet": ("layer3.0", [0, 10], "four"), "alexnet": ("conv5", [225, 3],
                                                               "eight")}


def _independent(model: torch.nn.Module, data: Any, layer: str, unit: int | None
                 ) -> tuple[np.ndarray, np.ndarray]:
    module = dict(model.named_modules())[layer]

    def zero(_m: Any, _a: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, unit] = 0
        return out

    handle = module.register_forward_hook(zero) if unit is not None else None
    values, labels = [], []
    try:
        with torch.no_grad():
            model.eval()
            for x, y in data:
                lp = torch.log_softmax(model(x).double(), dim=1)
                values.append(lp.gather(1, y.view(-1, 1)).squeeze(1))
                labels.append(y)
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(values).numpy(), torch.cat(labels).numpy()


@pytest.mark.parametrize("name", sorted(CASES))
def test_logprob_drops_and_intervals_equal_an_independent_computation(
        name: str, tmp_path: Path) -> None:
    layer, units, target = CASES[name]
    spec = tmp_path / "lp.yaml"
    spec.write_text(textwrap.dedent(f"""\
        unitablate: 1
        model: model
        data: data
        classes: [zero, one, two, three, four, five, six, seven, eight, nine]
        checks:
          - layer: {layer}
            units: [{units[0]}]
            expect:
              {target}: {{min_logprob_drop: 0.01}}
              overall: {{max_logprob_drop: 5}}
          - layer: {layer}
            units: [{units[1]}]
            expect:
              {target}: {{min_logprob_drop: 0.01, confidence: 90%}}
          - layer: {layer}
            any_unit:
              expect:
                {target}: {{min_logprob_drop: 0.01}}
        """))
    model, data = getattr(fixtures, name)(), fixtures.test_data()
    run = run_spec(spec, fixtures={"model": model, "data": data})
    records = {r["id"]: r for r in run.records}
    base, labels = _independent(model, data, layer, None)
    k = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
         "nine"].index(target)
    checked = 0
    for r in records.values():
        assert r["metric"] == "logprob", r["id"]
        unit = r["units"][0] if r["units"] else r["deciding_units"][0]
        ablated, _ = _independent(model, data, layer, unit)
        mask = slice(None) if r["target"] == "overall" else labels == k
        diffs = base[mask] - ablated[mask]
        n = len(diffs)
        sem = diffs.std(ddof=1) / math.sqrt(n)
        level = 0.9 if r["id"].startswith(f"{layer}-u{units[1]}") else 0.95
        lo, hi = stats.t.interval(level, n - 1, loc=diffs.mean(), scale=sem)
        assert r["n"] == n
        assert r["drop"] == pytest.approx(diffs.mean(), abs=2e-5), r["id"]
        assert r["baseline"] == pytest.approx(base[mask].mean(), abs=2e-5)
        assert r["ablated"] == pytest.approx(ablated[mask].mean(), abs=2e-5)
        assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo, abs=2e-5),
                                               pytest.approx(hi, abs=2e-5)), r["id"]
        p = stats.ttest_rel(base[mask], ablated[mask]).pvalue
        assert r["p_value"] == pytest.approx(p, rel=1e-3, abs=1e-9), r["id"]
        checked += 1
    assert checked == 4
    # judged on the bound when confidence is set: the 90% lower bound, not the estimate
    second = records[f"{layer}-u{units[1]}-{target}-min_logprob_drop"]
    assert second["outcome"] == ("passed" if second["ci_low"] >= 0.01 else "failed")
