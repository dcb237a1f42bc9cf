"""Evaluate a demo spec on demo checkpoints with plain hooks: the expected outcome per item.

This is an independent re-implementation of a spec's semantics (zero ablation, top-1
recall per class, drop in pp, point estimates against thresholds) used to write
``checkpoints/expected_outcomes.json``, which the plugin's own end-to-end tests assert
against. It only reads the keys the demo specs use (``units``, ``any_unit`` with
``at_least``, ``every_unit``; ``min_drop``/``max_drop``; ``overall`` or class names;
``unit: head`` and ``channel_dim`` on the spec or a check). Heads are zeroed by weight
surgery on the output projection, not by the library's head ablation.

Command::

    python -m unitablate_demo.outcomes            # prints a table, rewrites the JSON file

Example::

    >>> parse_percent("15%")
    0.15
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from unitablate_demo import CLASS_NAMES
from unitablate_demo.data import load_split
from unitablate_demo.models import CHECKPOINT_DIR, load_model, read_manifest
from unitablate_demo.oracle import (
    LayerDrops,
    checkpoint_drops,
    damage_profiles,
    group_drop,
    match_recorded,
)

#: min_similarity when a check's identity: mapping does not set one (the plugin's default)
DEFAULT_MIN_SIMILARITY = 0.75


def _recorded(spec_path: Path, spec: dict[str, Any]) -> dict[str, dict[int, list[float]]]:
    """The spec's signatures sidecar: layer -> recorded unit -> profile."""
    entry = spec.get("signatures") or {}
    path = spec_path.parent / entry.get("file", f"{spec_path.stem}.signatures.json")
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    return {layer: {int(u): list(v["profile"]) for u, v in units.items()}
            for layer, units in doc["layers"].items()}


def _identity(check: dict[str, Any]) -> tuple[str, float]:
    raw = check.get("identity", "index")
    if isinstance(raw, dict):
        return str(raw["by"]), float(raw.get("min_similarity", DEFAULT_MIN_SIMILARITY))
    return str(raw), DEFAULT_MIN_SIMILARITY

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_PATH = CHECKPOINT_DIR / "expected_outcomes.json"

#: spec (relative to the repository root) -> checkpoints it is evaluated on.
PLAN: dict[str, tuple[str, ...]] = {
    "specs/resnet.yaml": ("resnet", "resnet-finetuned", "resnet-retrained"),
    "specs/alexnet.yaml": ("alexnet", "alexnet-retrained"),
    "specs/vit.yaml": ("vit", "vit-finetuned", "vit-retrained"),
}


def parse_percent(text: str) -> float:
    """``"15%"`` -> ``0.15``."""
    if not isinstance(text, str) or not text.endswith("%"):
        raise ValueError(f"threshold {text!r} is not written as NN%")
    return round(float(text[:-1]) / 100, 10)


@dataclass(frozen=True)
class ItemOutcome:
    """One expectation constraint of one check on one checkpoint."""

    check: int  # 0-based index in checks:
    line: int  # 1-based line of the check's first key
    item_line: int  # 1-based line of the constraint's key
    layer: str
    mode: str  # units | any_unit | every_unit
    units: list[int]
    at_least: int | None
    target: str  # class name or "overall"
    class_index: int | None
    constraint: str
    threshold: float  # fraction
    measured_drop: float  # fraction; any_unit: the at_least-th best unit; every_unit: worst
    deciding_unit: int | None
    units_meeting: int | None  # any_unit / every_unit: how many units meet the constraint
    outcome: str  # passed | failed
    id: str  # the test id under the convention of pytest_unitablate.spec.ids
    #: identity: signature checks: the units matched to the recorded ones, their cosine
    #: similarities, and whether the check fails because no unit matches
    matched_units: list[int] | None = None
    similarity: list[float] | None = None
    no_match: bool = False
    #: named class min_drop checks: whether some single unit of the layer meets the
    #: threshold on this checkpoint (the role survives somewhere, whatever matching says)
    role_survives: bool | None = None


def _meets(kind: str, drop: float, threshold: float) -> bool:
    # drops and thresholds are compared in pp rounded to 1e-9 to avoid float noise
    d, t = round(drop, 9), round(threshold, 9)
    return d >= t if kind == "min_drop" else d <= t


def _get(node: yaml.Node, key: str) -> yaml.Node:
    assert isinstance(node, yaml.MappingNode)
    for k, v in node.value:
        if k.value == key:
            return v  # type: ignore[no-any-return]
    raise KeyError(key)


def _lines(path: Path) -> tuple[list[int], dict[tuple[int, str, str], int]]:
    """1-based lines of each check and of each (check, target, constraint) key."""
    root = yaml.compose(path.read_text())
    assert root is not None, f"{path} is empty"
    checks = _get(root, "checks")
    assert isinstance(checks, yaml.SequenceNode)
    check_lines = [c.start_mark.line + 1 for c in checks.value]
    constraint_lines: dict[tuple[int, str, str], int] = {}
    for i, c in enumerate(checks.value):
        keys = [k.value for k, _ in c.value]
        block = c if "units" in keys else _get(c, next(m for m in keys if m.endswith("_unit")))
        for tkey, tval in _get(block, "expect").value:
            for ckey, _ in tval.value:
                constraint_lines[(i, tkey.value, ckey.value)] = ckey.start_mark.line + 1
    return check_lines, constraint_lines


def evaluate_spec(spec_path: Path, checkpoint: str) -> list[ItemOutcome]:
    """Every item of ``spec_path`` evaluated on ``checkpoint`` (test split, zero ablation)."""
    spec = yaml.safe_load(spec_path.read_text())
    lines, constraint_lines = _lines(spec_path)
    classes = list(spec.get("classes") or CLASS_NAMES)
    model = load_model(checkpoint)
    x, y = load_split("test")
    cache: dict[str, LayerDrops] = {}
    recorded = _recorded(spec_path, spec)
    matches: dict[str, dict[int, tuple[int, float]]] = {}
    out: list[ItemOutcome] = []
    for i, check in enumerate(spec["checks"]):
        layer = check["layer"]
        unit = str(check.get("unit", spec.get("unit", "channel")))
        dim = int(check.get("channel_dim", spec.get("channel_dim", 1)))
        mode = next((m for m in ("units", "any_unit") if m in check), "every_unit")
        block = check if mode == "units" else check[mode]
        at_least = int(block.get("at_least", 1)) if mode == "any_unit" else None
        identity, min_similarity = _identity(check)
        matched: list[int] | None = None
        similarity: list[float] | None = None
        no_match = False
        if mode == "units" and identity == "signature":
            if layer not in matches:
                matches[layer] = match_recorded(recorded[layer],
                                                damage_profiles(model, layer, x, y, unit, dim))
            matched = [matches[layer][u][0] for u in check["units"]]
            similarity = [round(matches[layer][u][1], 4) for u in check["units"]]
            no_match = min(similarity) < min_similarity
        if mode == "units":
            overall, per_class = group_drop(model, layer, matched or check["units"], x, y,
                                            unit, dim)
        where = f"{layer}@{unit}{dim}"
        if where not in cache and (mode != "units" or identity == "signature"):
            cache[where] = checkpoint_drops(checkpoint, layer, unit, dim)
        for target, constraints in block["expect"].items():
            k = None if target == "overall" else classes.index(target)
            for kind, text in constraints.items():
                threshold = parse_percent(text)
                deciding: int | None = None
                meeting: int | None = None
                survives: bool | None = None
                if mode == "units":
                    drop = (overall if k is None else float(per_class[k])) / 100
                    ok = _meets(kind, drop, threshold) and not no_match
                    if identity == "signature" and k is not None and kind == "min_drop":
                        survives = any(_meets(kind, float(v) / 100, threshold)
                                       for v in cache[where].class_drop[:, k])
                else:
                    d = cache[where]
                    drops = (d.overall_drop if k is None else d.class_drop[:, k]) / 100
                    good = np.array([_meets(kind, float(v), threshold) for v in drops])
                    meeting = int(good.sum())
                    sign = -1 if kind == "min_drop" else 1  # best first for min, worst first
                    order = np.argsort(sign * drops, kind="stable")
                    if mode == "any_unit":
                        assert at_least is not None
                        deciding = int(order[at_least - 1])
                        ok = meeting >= at_least
                    else:
                        deciding = int(order[::-1][0]) if kind == "max_drop" else int(order[-1])
                        ok = bool(good.all())
                    drop = float(drops[deciding])
                if mode == "units":
                    unit_part = ("h" if unit == "head" else "u") + "+".join(
                        str(u) for u in check["units"])
                elif mode == "any_unit":
                    unit_part = "any" if at_least == 1 else f"any{at_least}"
                else:
                    unit_part = "every"
                if unit == "head" and mode != "units":
                    unit_part += "_head"
                if "name" in check:  # the id's name part is the check's name
                    unit_part = ""
                out.append(
                    ItemOutcome(
                        check=i,
                        line=lines[i],
                        item_line=constraint_lines[(i, str(target), kind)],
                        layer=layer,
                        mode=mode,
                        units=list(check.get("units", [])),
                        at_least=at_least,
                        target=str(target),
                        class_index=k,
                        constraint=kind,
                        threshold=threshold,
                        measured_drop=round(drop, 6),
                        deciding_unit=deciding,
                        units_meeting=meeting,
                        outcome="passed" if ok else "failed",
                        id=(f"{check['name']}-{target}-{kind}" if "name" in check
                            else f"{layer}-{unit_part}-{target}-{kind}"),
                        matched_units=matched, similarity=similarity, no_match=no_match,
                        role_survives=survives,
                    )
                )
    return out


def main(argv: list[str] | None = None) -> int:
    """Evaluate every planned spec on its checkpoints; print a table; write the JSON."""
    p = argparse.ArgumentParser(description="Expected outcomes of the demo specs.")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    manifest = read_manifest()
    result: dict[str, Any] = {
        "about": "expected outcome of every item of the demo specs per checkpoint; "
        "zero ablation, test split (597), point estimates; "
        "written by: python -m unitablate_demo.outcomes",
        "torch_version": torch.__version__,
        "specs": {},
    }
    for spec_rel, checkpoints in PLAN.items():
        per_ckpt: dict[str, Any] = {}
        rows: dict[str, list[str]] = {}
        for ckpt in checkpoints:
            items = evaluate_spec(ROOT / spec_rel, ckpt)
            per_ckpt[ckpt] = {
                "checkpoint_sha256": manifest[ckpt]["sha256"],
                "passed": sum(it.outcome == "passed" for it in items),
                "failed": sum(it.outcome == "failed" for it in items),
                "items": [asdict(it) for it in items],
            }
            for it in items:
                verdict = "pass" if it.outcome == "passed" else "**FAIL**"
                cell = f"{verdict} ({100 * it.measured_drop:.1f})"
                key = f"{it.line} | `{it.id}` | {100 * it.threshold:.0f}%"
                rows.setdefault(key, []).append(cell)
        result["specs"][spec_rel] = per_ckpt
        print(f"\n{spec_rel} (cells: outcome, measured drop in pp)\n")
        print("| line | item | threshold | " + " | ".join(checkpoints) + " |")
        print("|---|---|---|" + "---|" * len(checkpoints))
        for key, cells in rows.items():
            print(f"| {key} | " + " | ".join(cells) + " |")
        counts = [f"{c}: {v['passed']} passed, {v['failed']} failed" for c, v in per_ckpt.items()]
        print("\n" + ", ".join(counts))
    if not args.no_write:
        EXPECTED_PATH.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
