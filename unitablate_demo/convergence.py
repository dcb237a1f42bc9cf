"""Do units survive a retrain? Matching units across seeds on the demo models.

For each pair of demo checkpoints trained from different seeds (and the fine-tune, as a
control) and each demo layer, every unit of the first model is matched one-to-one to a unit
of the second (Hungarian method) by two signatures:

* ``activation``: Pearson correlation of the units' spatially averaged activations over
  the test split, what Li, Yosinski, Clune, Lipson and Hopcroft (ICLR 2016, "Convergent
  Learning") match by;
* ``profile``: cosine of the class-damage profiles ``identity: signature`` uses
  (:mod:`pytest_unitablate.core.identity`).

It prints, per pair and layer, the median and quartiles of the best-match similarity and,
for the units that carry a class (a single-unit drop of at least 15 pp on some class), how
often the matched unit carries the same class (its largest drop is on that class and at
least half as big), next to the chance rate (a random unit of the other model doing so).
All drops are plain-hook measurements (:mod:`unitablate_demo.oracle`).

Command::

    python -m unitablate_demo.convergence        # the table in docs/identity.md

Example::

    >>> role_kept(np.array([[30.0, 0.0]]), np.array([[0.0, 20.0], [16.0, 1.0]]), {0: 1})
    [True]
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch
from scipy.optimize import linear_sum_assignment

from unitablate_demo.data import load_split
from unitablate_demo.models import load_model
from unitablate_demo.oracle import checkpoint_drops, damage_profiles

#: (reference, other) checkpoint pairs, and the layers compared.
PAIRS = (("resnet", "resnet-finetuned"), ("resnet", "resnet-retrained"),
         ("resnet", "resnet-seed2"), ("resnet-retrained", "resnet-seed2"),
         ("alexnet", "alexnet-retrained"), ("alexnet", "alexnet-seed2"),
         ("alexnet-retrained", "alexnet-seed2"))
LAYERS = {"resnet": ("layer2.1", "layer3.0", "layer3.1"), "alexnet": ("conv5",)}
CARRIER_PP = 15.0


def activations(model: torch.nn.Module, layer: str, x: torch.Tensor
                ) -> npt.NDArray[np.float64]:
    """Spatially averaged activations of every unit of ``layer``: ``(units, examples)``."""
    out: list[torch.Tensor] = []
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, o: out.append(o.detach()))
    try:
        with torch.inference_mode():
            model.eval()(x)
    finally:
        handle.remove()
    a = out[0]
    means: npt.NDArray[np.float64] = a.mean(dim=tuple(range(2, a.dim()))).double().numpy().T
    return means


def _normalised(a: npt.NDArray[np.float64], center: bool) -> npt.NDArray[np.float64]:
    a = a - a.mean(axis=1, keepdims=True) if center else a
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    out: npt.NDArray[np.float64] = np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)
    return out


def similarity(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], center: bool
               ) -> npt.NDArray[np.float64]:
    """Pearson correlation (``center``) or cosine of every row of ``a`` with every row of b."""
    out: npt.NDArray[np.float64] = _normalised(a, center) @ _normalised(b, center).T
    return out


def role_kept(drops_a: npt.NDArray[np.float64], drops_b: npt.NDArray[np.float64],
              match: Mapping[int, int]) -> list[bool]:
    """For each matched unit ``u -> v``: does ``v`` drop ``u``'s most damaged class most,
    by at least half of ``u``'s drop?"""
    kept = []
    for u, v in sorted(match.items()):
        k = int(np.argmax(drops_a[u]))
        kept.append(bool(int(np.argmax(drops_b[v])) == k and drops_b[v, k] >= 0.5 * drops_a[u, k]))
    return kept


def main(argv: list[str] | None = None) -> int:
    """Print the table (markdown)."""
    p = argparse.ArgumentParser(description="Unit matching across seeds on the demo models.")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = load_split("test")
    print("| models | layer | signature | similarity of matches: median [q1, q3] | "
          "carriers | same role after matching | chance |")
    print("|---|---|---|---|---|---|---|")
    totals: dict[str, list[bool]] = {"activation": [], "profile": []}
    for first, second in PAIRS:
        a, b = load_model(first), load_model(second)
        for layer in LAYERS[first.split("-")[0]]:
            da, db = checkpoint_drops(first, layer).class_drop, \
                checkpoint_drops(second, layer).class_drop
            carriers = [u for u in range(len(da)) if da[u].max() >= CARRIER_PP]
            chance = np.mean([np.mean([
                int(np.argmax(db[v])) == int(np.argmax(da[u]))
                and db[v, int(np.argmax(da[u]))] >= 0.5 * da[u].max()
                for v in range(len(db))]) for u in carriers]) if carriers else float("nan")
            signatures = {
                "activation": (activations(a, layer, x), activations(b, layer, x), True),
                "profile": (damage_profiles(a, layer, x, y), damage_profiles(b, layer, x, y),
                            False)}
            for name, (sa, sb, center) in signatures.items():
                sim = similarity(sa, sb, center)
                rows, cols = linear_sum_assignment(sim, maximize=True)
                match = {int(r): int(c) for r, c in zip(rows, cols, strict=True)}
                # carriers are matched among themselves, as a spec's protected units are
                if carriers:
                    sub = sim[carriers]
                    r2, c2 = linear_sum_assignment(sub, maximize=True)
                    kept = role_kept(da, db, {carriers[i]: int(c) for i, c in zip(
                        r2, c2, strict=True)})
                else:
                    kept = []
                totals[name] += kept if not second.endswith("finetuned") else []
                best = np.array([sim[u, match[u]] for u in sorted(match)])
                q1, med, q3 = np.percentile(best, [25, 50, 75])
                rate = f"{sum(kept)}/{len(kept)}" if kept else "-"
                print(f"| {first} / {second} | {layer} | {name} | {med:.2f} [{q1:.2f}, "
                      f"{q3:.2f}] | {len(carriers)} | {rate} | {chance:.2f} |")
    for name, kept in totals.items():
        print(f"\nacross seeds ({name}): {sum(kept)}/{len(kept)} carriers matched to a unit "
              f"with the same role")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
