"""What a swept item says about the scan engine that ran: the record's ``engine``,
``engine_reason`` and ``engine_plan`` (layer-wide and ``top_units`` items alike), and the
warning for a fallback to the naive loop: once per layer, located at its ``layer:`` line,
and not when the naive loop measured faster or is the only engine there is (heads,
tokenizer-style batches).

The scans are the real ones; only the engine they report is set by the test, since which
engine a real model falls back to depends on its code (and, for a measured choice, on
the machine's speed).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from pytest_unitablate import run_spec


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()


SPEC = """\
unitablate: 1
model: model
data: data
checks:
  - layer: '1'
    every_unit: {expect: {overall: {max_drop: 100%}}}
  - layer: '1'
    top_units: {k: 1, class: 1, expect: {overall: {max_drop: 100%}}}
  - layer: '0'
    every_unit: {expect: {overall: {max_drop: 100%}}}
"""


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, reason: str,
         plan: str = "2 unit(s) x 12 example(s) per pass") -> Any:
    from pytest_unitablate.engine import sweeps

    real = sweeps.scan

    def reporting(*args: Any, **kwargs: Any) -> Any:
        return dataclasses.replace(real(*args, **kwargs), method=method, reason=reason,
                                   plan=plan)

    monkeypatch.setattr(sweeps, "scan", reporting)
    path = tmp_path / "s.yaml"
    path.write_text(SPEC)
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(12, 1, 5, 5, generator=g), torch.randint(0, 3, (12,), generator=g))
    return run_spec(path, fixtures={"model": _model(), "data": data})


def test_each_swept_item_records_the_engine_its_reason_and_plan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path, monkeypatch, "naive", "tokenizer-style batches are replayed")
    assert len(run.items) == 3
    for item in run.items:
        assert (item.record["engine"], item.record["engine_reason"],
                item.record["engine_plan"]) == (
            "naive", "tokenizer-style batches are replayed",
            "2 unit(s) x 12 example(s) per pass"), item.id
    run = _run(tmp_path, monkeypatch, "prefix", "", plan="")
    for item in run.items:  # nothing refused, no plan: empty fields, not empty strings
        assert (item.record["engine"], item.record["engine_reason"],
                item.record["engine_plan"]) == ("prefix", None, None), item.id


def test_a_fallback_to_the_naive_loop_is_warned_once_per_layer_at_its_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = "the network after the layer cannot be traced: a data-dependent branch"
    for method in ("naive", "naive+prefix"):  # a sweep whose pieces ran different engines
        run = _run(tmp_path, monkeypatch, method, reason)
        warned = [w for item in run.items for w in item.warnings]
        assert warned == [
            f"{tmp_path / 's.yaml'}:{line}: the sweep of {layer} used the naive engine "
            f"(one forward per unit): {reason}" for line, layer in ((5, "1"), (9, "0"))]


@pytest.mark.parametrize(("method", "reason"), [
    ("naive", "measured on the first batch, the split network costs 3.00 ms per unit "
              "against 2.00 ms for a whole forward (the naive loop)"),
    ("naive", "heads: measured on the first batch, a head's suffix pass costs more"),
    ("naive", "heads: the attention's heads are ablated inside it"),
    ("naive", "tokenizer-style batches are replayed one unit at a time"),
    ("naive", ""),
    ("prefix", "the closed form needs a 4-D N,C,H,W layer with channel_dim 1"),
])
def test_the_naive_loop_chosen_for_a_reason_or_not_at_all_is_not_warned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, reason: str) -> None:
    run = _run(tmp_path, monkeypatch, method, reason)
    assert not [w for item in run.items for w in item.warnings]
