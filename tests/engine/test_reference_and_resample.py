"""Declared reference data (``reference:``) and resample ablation, through ``run_spec``.

The independent side uses a plain forward hook and numpy, nothing of the engine: the
means over the reference data, and the replacement values of the documented draw.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pytest_unitablate import run_spec
from pytest_unitablate.core.resample import resample_index


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4)).eval()


def _data(seed: int, n: int, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    with torch.no_grad():
        y = model(x + 0.8 * torch.randn(n, 6, generator=g)).argmax(1)  # not 100% right
    return x, y


def _spec(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\n" + textwrap.dedent(body))
    return path


def _measure(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], units: list[int],
             replace: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-example (correct, log p(true)) with ``units`` of layer "1" set by ``replace``
    (a function of the layer output -> replacement of the same shape)."""
    x, y = data

    def hook(_m: Any, _a: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, units] = replace(out)[:, units]
        return out

    handle = model[1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    lp = torch.log_softmax(logits.double(), 1)[torch.arange(len(y)), y]
    return (logits.argmax(1) == y).numpy(), lp.numpy()


def _plain(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
           ) -> tuple[np.ndarray, np.ndarray]:
    return _measure(model, data, [], lambda out: out)


BODY = """\
reference: ref
ablation: {ablation}
checks:
  - layer: "1"
    units: [2, 5]
    expect:
      overall: {{max_drop: 100%, max_logprob_drop: 100}}
"""


def _records(tmp_path: Path, model: nn.Module, data: Any, ref: Any, ablation: str,
             **kwargs: Any) -> dict[str, dict[str, Any]]:
    run = run_spec(_spec(tmp_path, BODY.format(ablation=ablation)),
                   fixtures={"model": model, "data": data, "ref": ref}, **kwargs)
    assert run.ok, [(r["id"], r["reason"]) for r in run.failed]
    return {r["constraint"]: r for r in run.records}


def test_mean_ablation_takes_its_means_over_the_declared_reference(tmp_path: Path) -> None:
    model = _model()
    data, ref = _data(1, 90, model), _data(2, 40, model)
    with torch.no_grad():
        means = model[1](model[0](ref[0])).mean(0)
    base_c, base_lp = _plain(model, data)
    ab_c, ab_lp = _measure(model, data, [2, 5], lambda out: means.expand_as(out))
    records = _records(tmp_path, model, data, ref, "mean")
    acc, lp = records["max_drop"], records["max_logprob_drop"]
    assert acc["drop"] == pytest.approx(base_c.mean() - ab_c.mean())
    assert lp["drop"] == pytest.approx((base_lp - ab_lp).mean(), abs=1e-5)
    assert lp["drop"] != 0.0
    # the evaluation data's own means give another answer: the reference is what counts
    with torch.no_grad():
        own = model[1](model[0](data[0])).mean(0)
    _, own_lp = _measure(model, data, [2, 5], lambda out: own.expand_as(out))
    assert abs((base_lp - own_lp).mean() - lp["drop"]) > 1e-4


def test_a_changed_reference_set_is_not_read_from_the_cache(tmp_path: Path) -> None:
    model = _model()
    data = _data(1, 90, model)
    cache = tmp_path / "cache"
    first = _records(tmp_path, model, data, _data(2, 40, model), "mean", cache_dir=cache)
    other = _records(tmp_path, model, data, _data(3, 40, model), "mean", cache_dir=cache)
    fresh = _records(tmp_path, model, data, _data(3, 40, model), "mean")
    assert other["max_logprob_drop"]["drop"] == fresh["max_logprob_drop"]["drop"]
    assert other["max_logprob_drop"]["drop"] != first["max_logprob_drop"]["drop"]


@pytest.mark.parametrize("draws", [1, 3])
def test_resample_follows_the_documented_draw(tmp_path: Path, draws: int) -> None:
    model = _model()
    data, ref = _data(1, 90, model), _data(2, 40, model)
    with torch.no_grad():
        values = model[1](model[0](ref[0]))
    base_c, base_lp = _plain(model, data)
    corrects, lps = [], []
    for d in range(draws):
        j = torch.as_tensor(resample_index(90, 40, draw=d, seed=0, same_data=False))
        c, lp = _measure(model, data, [2, 5], lambda out, j=j: values[j])
        corrects.append(c)
        lps.append(lp)
    ablation = "resample" if draws == 1 else f"{{resample: {{draws: {draws}}}}}"
    records = _records(tmp_path, model, data, ref, ablation)
    acc, lp = records["max_drop"], records["max_logprob_drop"]
    assert lp["drop"] == pytest.approx((base_lp - np.mean(lps, axis=0)).mean(), abs=1e-5)
    assert acc["drop"] == pytest.approx(base_c.mean() - np.mean(corrects), abs=1e-12)
    assert acc["ablation"] == ("resample" if draws == 1 else f"resample{draws}")


def test_resample_from_one_repeated_example_equals_mean_over_that_set(tmp_path: Path) -> None:
    model = _model()
    data = _data(1, 90, model)
    one = _data(2, 1, model)
    repeated = (one[0].repeat(7, 1), one[1].repeat(7))
    resampled = _records(tmp_path, model, data, repeated, "{resample: {draws: 2}}")
    mean = _records(tmp_path, model, data, repeated, "mean")
    for kind in ("max_drop", "max_logprob_drop"):
        assert resampled[kind]["drop"] == pytest.approx(mean[kind]["drop"], abs=1e-6)
        assert resampled[kind]["ablated"] == pytest.approx(mean[kind]["ablated"], abs=1e-6)


def test_resample_without_a_reference_never_takes_the_example_itself(tmp_path: Path) -> None:
    j = resample_index(500, 500, draw=0, seed=7, same_data=True)
    assert not np.any(j == np.arange(500)) and set(j) <= set(range(500))
    assert np.array_equal(j, resample_index(500, 500, draw=0, seed=7, same_data=True))
    assert not np.array_equal(j, resample_index(500, 500, draw=1, seed=7, same_data=True))


@pytest.mark.parametrize("ablation", ["mean", "resample"])
def test_reference_data_the_model_rejects_is_an_error_at_the_reference_line(
        tmp_path: Path, ablation: str) -> None:
    model = _model()
    data = _data(1, 90, model)
    wrong = (torch.randn(20, 5), torch.zeros(20, dtype=torch.long))  # 5 features, not 6
    run = run_spec(_spec(tmp_path, BODY.format(ablation=ablation)),
                   fixtures={"model": model, "data": data, "ref": wrong})
    assert not run.ok
    reasons = {r["reason"] for r in run.failed}
    assert len(reasons) == 1
    (text,) = [i.message for i in run.items if i.message][:1]
    assert text is not None
    assert "s.yaml:4: the model 'model' raised RuntimeError on the data 'ref'" in text


def test_resample_of_the_evaluation_data_follows_the_draw_with_the_runs_seed(
        tmp_path: Path) -> None:
    """Without ``reference:`` the values come from other examples of the evaluation data
    (never the example itself), drawn with the run's seed."""
    model = _model()
    data = _data(1, 90, model)
    with torch.no_grad():
        values = model[1](model[0](data[0]))
    base_c, base_lp = _plain(model, data)
    j = torch.as_tensor(resample_index(90, 90, draw=0, seed=5, same_data=True))
    ab_c, ab_lp = _measure(model, data, [2, 5], lambda out: values[j])
    body = BODY.replace("reference: ref\n", "").format(ablation="resample")
    run = run_spec(_spec(tmp_path, body), fixtures={"model": model, "data": data}, seed=5)
    records = {r["constraint"]: r for r in run.records}
    assert records["max_logprob_drop"]["drop"] == pytest.approx((base_lp - ab_lp).mean(),
                                                                abs=1e-5)
    assert records["max_drop"]["drop"] == pytest.approx(base_c.mean() - ab_c.mean())
    other = torch.as_tensor(resample_index(90, 90, draw=0, seed=0, same_data=True))
    _, other_lp = _measure(model, data, [2, 5], lambda out: values[other])
    assert abs((base_lp - other_lp).mean() - records["max_logprob_drop"]["drop"]) > 1e-4
