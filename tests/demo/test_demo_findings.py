"""The paper's first two findings hold on the shipped checkpoints (computed, not copied)."""

from __future__ import annotations

import pytest

from unitablate_demo.findings import LAYERS, findings_rows, markdown


@pytest.mark.parametrize(("checkpoint", "layer"), [("resnet", "layer3.1"), ("resnet", "layer3.0")])
def test_single_units_hurt_classes_far_more_than_overall(checkpoint: str, layer: str) -> None:
    (row,) = findings_rows(checkpoint, [layer])
    # finding 2: some single unit badly damages one class
    assert row.max_class_drop >= 30.0
    # finding 1: no single unit costs much overall, compared with the class damage
    assert row.max_overall_drop <= 0.25 * row.max_class_drop
    assert row.mean_overall_drop < 5.0


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["resnet", "alexnet", "resnet-retrained"])
def test_findings_on_every_late_layer(checkpoint: str) -> None:
    arch = "alexnet" if checkpoint.startswith("alexnet") else "resnet"
    late = LAYERS[arch][-2:] if arch == "resnet" else ("conv5",)
    rows = findings_rows(checkpoint, late)
    for row in rows:
        assert row.max_overall_drop <= 0.25 * row.max_class_drop, row
        assert row.max_class_drop >= 30.0, row
    table = markdown(rows)
    assert table.count("\n") == len(rows) + 1
