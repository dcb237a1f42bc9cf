"""The paper's findings under the log-probability measure and under zero, mean and
resample ablation, and how many test examples a guard of each kind needs.

    python -m unitablate_demo.ablation_kinds [--boot 200]

For each demo layer below, every unit is ablated alone with each kind (one full scan each;
resample with the test digits as their own reference, one draw, seed 0), on the 597 test
digits. Printed as Markdown tables:

1. **Findings** per (layer, ablation): the median overall drop against the median of each
   unit's largest class drop (finding 1: one unit barely moves overall accuracy but can
   wreck a class), in pp and in nats; Spearman of class selectivity with the largest class
   drop (finding 2: selectivity predicts class damage) and with the overall drop
   (finding 3: it predicts overall damage less well).
2. **Ranking** per layer: does the ranking of units by class damage (log-prob, the largest
   class drop) change with the ablation kind? Spearman between kinds and the overlap of
   their ten most damaging units.
3. **Examples needed** per measure: for the (unit, class) pairs whose zero-ablation class
   drop on the full test set is at least 10 pp, the smallest number of examples of the
   class at which 80% of bootstrap subsamples give a 95% lower bound above zero (the loss
   is detected), for the accuracy drop and for the log-prob drop.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

#: (checkpoint, layer, how its units are addressed)
LAYERS: list[tuple[str, str, dict[str, Any]]] = [
    ("resnet", "layer3.0", {}),
    ("alexnet", "conv5", {}),
    ("vit", "encoder.layers.encoder_layer_0.mlp.1", {"channel_dim": -1}),
]
KINDS = ("zero", "mean", "resample")
SIZES = (5, 10, 15, 20, 30, 45, 58)


def _class_drops(result: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per unit: overall accuracy drop, largest class accuracy drop, overall and largest
    class log-prob drop (fractions and nats)."""
    labels = result.labels
    base_c = result.baseline.correct.astype(float)
    base_lp = result.baseline.true_logprob.astype(float)
    classes = int(labels.max()) + 1
    acc = result.correct.astype(float)
    lp = result.logprobs.astype(float)
    overall_acc = base_c.mean() - acc.mean(axis=1)
    overall_lp = (base_lp[None, :] - lp).mean(axis=1)
    per_acc = np.stack([base_c[labels == k].mean() - acc[:, labels == k].mean(axis=1)
                        for k in range(classes)], axis=1)
    per_lp = np.stack([(base_lp[None, labels == k] - lp[:, labels == k]).mean(axis=1)
                       for k in range(classes)], axis=1)
    return overall_acc, per_acc, overall_lp, per_lp


def _needed(before: np.ndarray, after: np.ndarray, metric: str, rng: np.random.Generator,
            boot: int) -> int | None:
    """The smallest subsample size at which 80% of bootstrap draws detect the drop."""
    from pytest_unitablate.verdicts.measure import Measurement

    for size in SIZES:
        if size > len(before):
            return None
        hits = 0
        for _ in range(boot):
            pick = rng.choice(len(before), size=size, replace=True)
            m = (Measurement.from_correct(before[pick], after[pick]) if metric == "accuracy"
                 else Measurement.from_logprob(before[pick], after[pick]))
            hits += m.ci[0] > 0
        if hits >= 0.8 * boot:
            return size
    return None


def main(argv: list[str] | None = None) -> None:
    from scipy.stats import spearmanr

    from pytest_unitablate import scan
    from pytest_unitablate.analysis.attributes import unit_attributes
    from pytest_unitablate.core.resample import ResampleSource, layer_values, resample_index
    from unitablate_demo.fixtures import checkpoint, test_data

    parser = argparse.ArgumentParser()
    parser.add_argument("--boot", type=int, default=200)
    args = parser.parse_args(argv)
    data = test_data()
    findings, ranking, needed = [], [], []
    rng = np.random.default_rng(0)
    for name, layer, address in LAYERS:
        model = checkpoint(name)
        selectivity = unit_attributes(model, data, layer, **address)["selectivity"].to_numpy()
        by_kind: dict[str, Any] = {}
        for kind in KINDS:
            extra: dict[str, Any] = dict(address)
            if kind == "resample":
                values = layer_values(model, data, layer)
                n = int(values.shape[0])
                extra["resample"] = [ResampleSource(values, resample_index(
                    n, n, draw=0, seed=0, same_data=True))]
            result = scan(model, data, layer, ablation=kind, progress=False, **extra)
            by_kind[kind] = (result, *_class_drops(result))
            _, o_acc, c_acc, o_lp, c_lp = by_kind[kind]
            max_acc, max_lp = c_acc.max(axis=1), c_lp.max(axis=1)
            findings.append(
                f"| {name} | {layer.replace('encoder.layers.encoder_', '')} | {kind} | "
                f"{np.median(o_acc) * 100:.1f} | {np.median(max_acc) * 100:.1f} | "
                f"{np.median(o_lp):.3f} | {np.median(max_lp):.3f} | "
                f"{spearmanr(selectivity, max_acc)[0]:.2f} | "
                f"{spearmanr(selectivity, max_lp)[0]:.2f} | "
                f"{spearmanr(selectivity, o_acc)[0]:.2f} |")
        zero_lp = by_kind["zero"][4].max(axis=1)
        top_zero = set(np.argsort(-zero_lp)[:10].tolist())
        for kind in ("mean", "resample"):
            other = by_kind[kind][4].max(axis=1)
            top = set(np.argsort(-other)[:10].tolist())
            ranking.append(f"| {name} | {layer.replace('encoder.layers.encoder_', '')} | "
                           f"zero vs {kind} | {spearmanr(zero_lp, other)[0]:.2f} | "
                           f"{len(top & top_zero)}/10 |")
        result, _, c_acc, _, _ = by_kind["zero"]
        labels = result.labels
        sizes: dict[str, list[int | None]] = {"accuracy": [], "logprob": []}
        pairs = np.argwhere(c_acc >= 0.10)
        for unit, k in pairs:
            mask = labels == k
            sizes["accuracy"].append(_needed(
                result.baseline.correct[mask], result.correct[unit][mask], "accuracy", rng,
                args.boot))
            sizes["logprob"].append(_needed(
                result.baseline.true_logprob[mask].astype(float),
                result.logprobs[unit][mask].astype(float), "logprob", rng, args.boot))
        for metric, found in sizes.items():
            got = [s for s in found if s is not None]
            needed.append(
                f"| {name} | {layer.replace('encoder.layers.encoder_', '')} | {metric} | "
                f"{len(found)} | {len(got)} | "
                f"{int(np.median(got)) if got else '-'} | {max(got) if got else '-'} |")
    print("| model | layer | ablation | median overall drop (pp) | median max class drop "
          "(pp) | median overall (nats) | median max class (nats) | selectivity ~ max class "
          "(pp) | selectivity ~ max class (nats) | selectivity ~ overall (pp) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(findings))
    print()
    print("| model | layer | kinds | Spearman of max class log-prob drops | top-10 overlap |")
    print("|---|---|---|---:|---:|")
    print("\n".join(ranking))
    print()
    print("| model | layer | measure | pairs (>= 10 pp) | detected at <= 58 | median n "
          "needed | largest n needed |")
    print("|---|---|---|---:|---:|---:|---:|")
    print("\n".join(needed))


if __name__ == "__main__":
    main()
