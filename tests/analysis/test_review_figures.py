"""The review page's figures: one heatmap row per distinct ablation, named classes."""

from __future__ import annotations

from pytest_unitablate.analysis.review_figures import _label, class_names, review_figures


def _record(ablation: str, spec: str = "specs/cnn.yaml", drop: float = 0.3) -> dict:
    return {"spec": spec, "line": 9, "layer": "conv2", "units": [5], "ablation": ablation,
            "target": "eight", "class_index": 2, "class_names": ["zero", "one", "eight"],
            "class_drops": [0.0, 0.01, drop], "overall_drop": drop / 3}


def test_a_unit_under_two_ablations_is_two_rows_and_specs_are_named() -> None:
    assert _label(_record("zero"), False) == "conv2 u5"
    assert _label(_record("mean"), False) == "conv2 u5 mean"
    assert _label(_record("resample3", "a/b/vit.yaml"), True) == "vit: conv2 u5 resample3"
    figures = review_figures([_record("zero"), _record("mean", drop=-0.04)])
    heat = dict(figures)["Unit x class damage"]
    assert ">conv2 u5<" in heat and ">conv2 u5 mean<" in heat
    assert ">eight<" in heat and ">zero<" in heat
    assert class_names([_record("zero")]) == {0: "zero", 1: "one", 2: "eight"}
    assert review_figures([{"spec": "s.yaml", "outcome": "error"}]) == []
