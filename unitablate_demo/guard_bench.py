"""Guard quality: do calibrated thresholds pass honest retrains and fail destroyed units?

For each demo architecture this trains (once, into ``--out``) honest retrains with other
seeds and destructive candidates (:mod:`unitablate_demo.zoo`), measures every item of a
spec on each, and then judges, per threshold rule:

* thresholds from seeds 0, 1 and 2 (the references; the rule of
  :func:`pytest_unitablate.verdicts.calibration.calibrated_threshold`, at several widening
  factors, and ``single``: one reference's own sampling bound, as record mode wrote before
  calibration), items the rule finds unguardable not written;
* the held-back seeds (never used for calibration) and each destructive candidate against
  them.

It prints, per rule, the items guarded, honest runs failing (and items failing), and per
candidate the items caught, for two specs:

* ``starter``: what ``discover`` writes over several models (per layer ``any_unit`` on
  every class in accuracy and log-prob, ``every_unit`` on overall, ``min_accuracy`` per
  class); its product path is ``discover_calibrated`` over the three references, then
  ``run_spec`` of every other model, whose failing items must be the ones the table's
  default rule predicts;
* ``demo``: the demo's hand-written spec (named units, some with ``identity: signature``),
  each ``min_drop``/``max_drop`` joined by the same ablation's log-prob constraint.

Example::

    python -m unitablate_demo.guard_bench                  # all three, 10 held-back seeds
    python -m unitablate_demo.guard_bench --small          # what CI runs: the ResNet, 2 seeds
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from unitablate_demo.zoo import Candidate, Unitset, build, load

REPO_SPECS = Path(__file__).resolve().parent / "specs"
FIXTURE = {"resnet": "digits_resnet", "alexnet": "digits_alexnet", "vit": "digits_vit"}
#: the units the demo specs name (pruned by the ``pruned`` candidate)
NAMED: dict[str, tuple[Unitset, ...]] = {
    "resnet": (Unitset("layer3.0", (0, 15, 10, 6)), Unitset("layer3.1", (8, 12)),
               Unitset("layer2.1", (3, 4))),
    "alexnet": (Unitset("conv5", (138, 74, 127, 177, 240, 225)),),
    "vit": (Unitset("encoder.layers.encoder_layer_0.self_attention", (1,), "head"),
            Unitset("encoder.layers.encoder_layer_0.mlp.1", (24,), "channel", -1)),
}
#: the layers whose units the ``dropout`` candidate trains with channel dropout
DROPOUT: dict[str, tuple[Unitset, ...]] = {
    "resnet": (Unitset("layer3.0", ()), Unitset("layer3.1", ()), Unitset("layer2.1", ())),
    "alexnet": (Unitset("conv5", ()),),
    "vit": (Unitset("encoder.layers.encoder_layer_0.mlp.1", (), "channel", -1),),
}
FORGET = {"resnet": 4, "alexnet": 9, "vit": 1}
#: the layers the starter spec scans, and how their units are addressed
STARTER: dict[str, tuple[list[str], int | None]] = {
    "resnet": (["layer2.1", "layer3.0", "layer3.1"], None),
    "alexnet": (["conv4", "conv5"], None),
    "vit": (["encoder.layers.encoder_layer_0.mlp.1", "encoder.layers.encoder_layer_1.mlp.1"],
            -1),
}
REFERENCES = (0, 1, 2)


def candidates(arch: str, held_out: int) -> tuple[list[Candidate], list[Candidate]]:
    """(honest seeds, destructive candidates) of ``arch``."""
    seeds = [Candidate(arch, "seed", s) for s in range(len(REFERENCES) + held_out)]
    bad = [Candidate(arch, "dropout", 100, units=DROPOUT[arch]),
           Candidate(arch, "pruned", 0, units=NAMED[arch]),
           Candidate(arch, "forgotten", 0, forget=FORGET[arch])]
    if arch != "alexnet":
        bad.append(Candidate(arch, "redundant", 0))
    return seeds, bad


def starter_spec(arch: str, folder: Path) -> Path:
    """The starter spec's skeleton for ``arch`` (every constraint null) in ``folder``."""
    from pytest_unitablate.engine.starter import skeleton
    from unitablate_demo import CLASS_NAMES

    folder.mkdir(parents=True, exist_ok=True)
    layers, dim = STARTER[arch]
    spec = folder / f"{arch}-starter.yaml"
    spec.write_text(skeleton(CLASS_NAMES, layers, channel_dim=dim, model_ref=FIXTURE[arch],
                             data_ref="digits_test"))
    return spec


def bench_spec(arch: str, folder: Path) -> Path:
    """The demo spec of ``arch`` (and its signatures) copied into ``folder``, each
    ``min_drop``/``max_drop`` item joined by the same ablation's log-prob constraint."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (REPO_SPECS / f"{arch}.yaml").read_text()
    text = re.sub(r"\{min_drop: ([0-9.]+%)\}", r"{min_drop: \1, min_logprob_drop: 0.001}",
                  text)
    text = re.sub(r"\{max_drop: ([0-9.]+%)\}", r"{max_drop: \1, max_logprob_drop: 9.0}", text)
    spec = folder / f"{arch}.yaml"
    spec.write_text(text)
    for sidecar in REPO_SPECS.glob(f"{arch}.signatures.json"):
        shutil.copy(sidecar, folder / sidecar.name)
    return spec


def measure(spec: Path, arch: str, meta: Path) -> list[dict[str, Any]]:
    """Every item of ``spec`` on the model ``meta`` describes (full sweeps)."""
    from pytest_unitablate import run_spec
    from unitablate_demo.fixtures import test_data

    with ExitStack() as stack:
        model = load(meta, stack)
        run = run_spec(spec, fixtures={FIXTURE[arch]: model, "digits_test": test_data()},
                       full_sweeps=True)
    return [{**i.record, "outcome": i.outcome} for i in run.items]


def _point(record: dict[str, Any]) -> Any:
    from pytest_unitablate.verdicts.calibration import Point

    kind = str(record["constraint"])
    field = "baseline" if kind.endswith("_accuracy") else \
        "relative_drop" if "relative" in kind else "drop"
    if record.get(field) is None:
        return None  # not measured: no unit matched, a dead unit, ...
    value = float(record[field])
    bound = record.get("record_value")
    return Point(value, float(bound) if bound is not None else value, n=int(record["n"]),
                 baseline=float(record["baseline"]))


def _fails(kind: str, threshold: float, record: dict[str, Any]) -> bool:
    point = _point(record)
    if point is None:
        return True
    value = float(point.value)
    return value < threshold - 1e-12 if kind.startswith("min") else value > threshold + 1e-12


def thresholds(rule: str, refs: list[dict[str, dict[str, Any]]]) -> dict[str, tuple[str, float]]:
    """The thresholds ``rule`` writes from the references' records (unguardable left out):
    ``single`` (the first reference's sampling bound, as record mode wrote before
    calibration) or ``widen=W`` (what record mode ``calibrate`` writes, at widening W)."""
    from pytest_unitablate.verdicts.calibration import (
        Calibrated,
        CalibrationFile,
        definition_of,
        unguardable_reason,
    )

    out: dict[str, tuple[str, float]] = {}
    if rule == "single":
        for item, first in refs[0].items():
            p = _point(first)
            kind = str(first["constraint"])
            found = Calibrated(kind, p.bound, 1, p.value, p.value, p.n,
                               p.baseline) if p is not None else None
            if found is not None and unguardable_reason(kind, found) is None:
                out[item] = (kind, found.threshold)
        return out
    file = CalibrationFile()
    for model, records in enumerate(refs):
        for item, record in records.items():
            p = _point(record)
            if p is not None:
                file.add(str(model), item, definition_of(record), str(record["constraint"]), p)
    for item, first in refs[0].items():
        kind = str(first["constraint"])
        found = file.calibrated(item, definition_of(first), widen=float(rule.split("=")[1]))
        if found is not None and unguardable_reason(kind, found) is None:
            out[item] = (kind, found.threshold)
    return out


def table(arch: str, measured: dict[str, list[dict[str, Any]]], rules: list[str],
          held: list[str], bad: list[str]) -> list[str]:
    """One line per rule: guarded items, honest runs failing, candidates caught."""
    by = {name: {r["id"]: r for r in records} for name, records in measured.items()}
    refs = [by[f"{arch}-seed{s}"] for s in REFERENCES]
    total = len(refs[0])
    lines = [f"{arch}: {total} items; references seeds {', '.join(map(str, REFERENCES))}; "
             f"{len(held)} held-back seeds; candidates {', '.join(bad)}",
             f"  {'rule':10s} {'guarded':>8s} {'honest runs failing':>20s} "
             f"{'honest items failing':>21s}   destructive: items caught (of guarded)"]
    for rule in rules:
        guarded = thresholds(rule, refs)
        honest = [sum(_fails(k, t, by[m][i]) for i, (k, t) in guarded.items()) for m in held]
        caught = {m: sum(_fails(k, t, by[m][i]) for i, (k, t) in guarded.items())
                  for m in bad}
        lines.append(f"  {rule:10s} {len(guarded):>4d}/{total:<3d} "
                     f"{sum(h > 0 for h in honest):>12d}/{len(held):<7d} "
                     f"{sum(honest):>12d}/{len(guarded) * len(held):<8d}   " +
                     ", ".join(f"{m.split('-', 1)[1]} {c}" for m, c in caught.items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", choices=sorted(FIXTURE))
    parser.add_argument("--held-out", type=int, default=10, help="held-back seeds (10)")
    parser.add_argument("--out", type=Path, default=Path("guard-bench"),
                        help="where models, measurements and specs go (default guard-bench)")
    parser.add_argument("--small", action="store_true",
                        help="CI's run: the ResNet, 2 held-back seeds, the starter spec")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from pytest_unitablate.verdicts.calibration import WIDEN

    archs = args.arch or (["resnet"] if args.small else ["resnet", "alexnet", "vit"])
    held_out = 2 if args.small else args.held_out
    default = f"widen={WIDEN:g}"
    rules = list(dict.fromkeys(["single", "widen=0", "widen=1", default, "widen=3"]))
    problems = 0
    for arch in archs:
        t0 = time.perf_counter()
        seeds, bad = candidates(arch, held_out)
        metas = {c.name: build(c, args.out / "models") for c in [*seeds, *bad]}
        held = [c.name for c in seeds if c.seed not in REFERENCES]
        names = [c.name for c in bad]
        specs = {"starter": starter_spec(arch, args.out / "specs")}
        if not args.small:
            specs["demo"] = bench_spec(arch, args.out / "specs")
        for which, spec in specs.items():
            cache = args.out / f"measured-{which}-{arch}.json"
            measured: dict[str, list[dict[str, Any]]] = (
                json.loads(cache.read_text()) if cache.exists() else {})
            for name, meta in metas.items():
                if name not in measured:
                    measured[name] = measure(spec, arch, meta)
            cache.write_text(json.dumps(measured, default=str))
            print(f"[{which} spec] ", end="")
            for line in table(arch, measured, rules, held, names):
                print(line)
            if which == "starter":
                problems += product_path(arch, args.out, metas, held + names, measured,
                                         default)
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    return 1 if problems else 0


def product_path(arch: str, out: Path, metas: dict[str, Path], others: list[str],
                 measured: dict[str, list[dict[str, Any]]], rule: str) -> int:
    """``discover`` over the references (:func:`discover_calibrated`), then every other
    model checked with the spec it wrote; the failing items must be the ones ``rule``
    predicts. Returns the number of models where they differ."""
    from pytest_unitablate import run_spec
    from pytest_unitablate.engine.starter import discover_calibrated
    from unitablate_demo import CLASS_NAMES
    from unitablate_demo.fixtures import test_data

    layers, dim = STARTER[arch]
    spec = out / "calibrated" / f"{arch}-starter.yaml"
    with ExitStack() as stack:
        refs = [load(metas[f"{arch}-seed{s}"], stack) for s in REFERENCES]
        discover_calibrated(refs, test_data(), layers, spec, model_ref=FIXTURE[arch],
                            data_ref="digits_test", classes=CLASS_NAMES, overwrite=True,
                            channel_dim=dim)
    by = {name: {r["id"]: r for r in records} for name, records in measured.items()}
    guarded = thresholds(rule, [by[f"{arch}-seed{s}"] for s in REFERENCES])
    differ = 0
    for name in others:
        with ExitStack() as stack:
            model = load(metas[name], stack)
            run = run_spec(spec, fixtures={FIXTURE[arch]: model, "digits_test": test_data()},
                           full_sweeps=True)
        failed = {i.id for i in run.items if i.outcome == "failed"}
        predicted = {i for i, (k, t) in guarded.items() if _fails(k, t, by[name][i])}
        if failed != predicted:
            differ += 1
            print(f"  product path differs on {name}: {sorted(failed ^ predicted)}")
    print(f"  product path (discover over seeds {', '.join(map(str, REFERENCES))}, then "
          f"run_spec): {'agrees with' if not differ else 'DIFFERS from'} the {rule} row on "
          f"{len(others) - differ}/{len(others)} models")
    return differ


if __name__ == "__main__":
    sys.exit(main())
