"""The paper's third finding on the demo models: attributes against ablation damage.

    python -m unitablate_demo.analysis            # prints a Markdown table
    python -m unitablate_demo.analysis --csv out/  # also writes attributes and correlations

For each demo layer (the ViT's heads and MLP neurons too): unit attributes (class
selectivity, weight norms, activation statistics)
and their Pearson/Spearman correlation with the overall drop and with the class-specific
drop of each unit, ablated alone (zero) on the 597 test digits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: (checkpoint, layer, next layer for l1_out, how its units are addressed)
LAYERS: list[tuple[str, str, str | None, dict[str, object]]] = [
    ("resnet", "layer2.1", "layer3.0.conv1", {}), ("resnet", "layer3.0", "layer3.1.conv1", {}),
    ("resnet", "layer3.1", "fc", {}), ("alexnet", "conv5", None, {}),
]
for _block in (0, 1):
    _name = f"encoder.layers.encoder_layer_{_block}"
    LAYERS.append(("vit", f"{_name}.self_attention", None, {"unit": "head"}))
    LAYERS.append(("vit", f"{_name}.mlp.1", f"{_name}.mlp.3", {"channel_dim": -1}))


def main() -> None:
    from pytest_unitablate import scan
    from pytest_unitablate.analysis.attributes import (
        attribute_correlations,
        unit_attributes,
        write_table,
    )
    from unitablate_demo.fixtures import checkpoint, test_data

    parser = argparse.ArgumentParser()
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    print("| model | layer | attribute | against | n | Pearson | Spearman | Spearman p |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for name, layer, nxt, how in LAYERS:
        model, data = checkpoint(name), test_data()
        attrs = unit_attributes(model, data, layer, next_layer=nxt, **how)  # type: ignore[arg-type]
        corr = attribute_correlations(attrs, scan(model, data, layer, **how).frame)  # type: ignore[arg-type]
        for row in corr.itertuples():
            print(f"| {name} | {layer} | {row.attribute} | {row.against} | {row.n} | "
                  f"{row.pearson:.2f} | {row.spearman:.2f} | {row.spearman_p:.3f} |")
        if args.csv is not None:
            args.csv.mkdir(parents=True, exist_ok=True)
            write_table(attrs, str(args.csv / f"{name}-{layer}-attributes.csv"))
            write_table(corr, str(args.csv / f"{name}-{layer}-correlations.csv"))


if __name__ == "__main__":
    main()
