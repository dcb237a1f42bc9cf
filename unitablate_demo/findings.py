"""The paper's first two findings on the demo checkpoints, as a Markdown table.

Zhou et al. (2018): (1) ablating any single unit barely changes overall accuracy, (2) yet it
can badly damage a few classes. For every candidate layer, every unit is ablated alone
(zero) on the 597 test images; the table gives the largest overall drop any single unit
causes and the largest drop of any one class.

Command (about a minute on one core)::

    python -m unitablate_demo.findings [--checkpoint resnet --checkpoint alexnet]

Example::

    >>> rows = findings_rows("resnet", ["layer3.1"])
    >>> rows[0].max_class_drop > rows[0].max_overall_drop
    True
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from unitablate_demo import CLASS_NAMES
from unitablate_demo.models import read_manifest
from unitablate_demo.oracle import checkpoint_drops

#: Candidate layers per architecture: block outputs of the ResNet, the last convs of AlexNet,
#: the ViT's heads (``@head``) and MLP neurons (``@-1``: channels of the last dimension).
LAYERS: dict[str, tuple[str, ...]] = {
    "resnet": ("layer1.1", "layer2.1", "layer3.0", "layer3.1"),
    "alexnet": ("conv3", "conv4", "conv5"),
    "vit": tuple(f"encoder.layers.encoder_layer_{b}.{part}" for b in range(3)
                 for part in ("self_attention@head", "mlp.1@-1")),
}


def _units(entry: str) -> tuple[str, str, int]:
    """``layer``, ``layer@head`` or ``layer@DIM`` -> (layer, unit kind, channel dim)."""
    layer, _, how = entry.partition("@")
    return (layer, "head", 1) if how == "head" else (layer, "channel", int(how or 1))


@dataclass(frozen=True)
class FindingsRow:
    """One layer of one checkpoint."""

    checkpoint: str
    layer: str
    units: int
    baseline: float  # overall accuracy, %
    max_overall_drop: float  # pp, over units
    mean_overall_drop: float  # pp, over units
    max_class_drop: float  # pp, over units and classes
    max_class_unit: int
    max_class: str
    units_over_20pp: int  # units that drop some class by >= 20 pp


def findings_rows(checkpoint: str, layers: Sequence[str] | None = None) -> list[FindingsRow]:
    """Measure every single-unit ablation of ``layers`` of ``checkpoint``."""
    arch = str(read_manifest()[checkpoint]["arch"])
    rows = []
    for entry in layers or LAYERS[arch]:
        layer, unit, dim = _units(entry)
        d = checkpoint_drops(checkpoint, layer, unit, dim)
        u, k = np.unravel_index(int(np.argmax(d.class_drop)), d.class_drop.shape)
        rows.append(
            FindingsRow(
                checkpoint=checkpoint,
                layer=entry.replace("@head", " (heads)").replace("@-1", " (neurons)"),
                units=len(d.overall_drop),
                baseline=d.base_overall,
                max_overall_drop=float(d.overall_drop.max()),
                mean_overall_drop=float(d.overall_drop.mean()),
                max_class_drop=float(d.class_drop.max()),
                max_class_unit=int(u),
                max_class=CLASS_NAMES[int(k)],
                units_over_20pp=int((d.class_drop >= 20).any(axis=1).sum()),
            )
        )
    return rows


def markdown(rows: Sequence[FindingsRow]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| checkpoint | layer | units | accuracy | max overall drop | mean overall drop "
        "| max class drop (unit, class) | units with a class drop >= 20 pp |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.checkpoint} | `{r.layer}` | {r.units} | {r.baseline:.1f}% "
            f"| {r.max_overall_drop:.1f} pp | {r.mean_overall_drop:.2f} pp "
            f"| {r.max_class_drop:.1f} pp (u{r.max_class_unit}, {r.max_class}) "
            f"| {r.units_over_20pp} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print the findings table."""
    p = argparse.ArgumentParser(description="Single-unit ablation findings on the demo models.")
    p.add_argument("--checkpoint", action="append", help="default: resnet, alexnet and vit")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[FindingsRow] = []
    for ckpt in args.checkpoint or ["resnet", "alexnet", "vit"]:
        rows += findings_rows(ckpt)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
