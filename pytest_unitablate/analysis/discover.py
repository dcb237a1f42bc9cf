"""Discovery: from a model to a starter spec with recorded thresholds, in one step.

Scans the given layers (every unit ablated alone), picks the most class-specific units
(largest lower confidence bound of a class drop), and writes a spec whose thresholds are the
bounds of paired confidence intervals, so the spec passes on the model it came from and
tolerates sampling noise on a retrain of the same data:

* one named-unit check per chosen unit (the units whose class drop has the largest lower
  bound; when accuracy bounds none, those whose log-prob drop has a strong lower bound
  of at least 0.05 nats): ``min_drop`` and ``min_logprob_drop`` on its class (lower
  bounds) and ``max_drop`` on overall accuracy (upper bound); a lower bound that keeps
  less than ``min_share`` of its measured drop (or that one example meets) is not
  written, and the comment says so;
* per layer, an ``every_unit`` guard on overall accuracy (the largest upper bound) and
  an ``any_unit`` check for each chosen class, which survives a retrain that renumbers
  units.

Command line (model and data are ``package.module:callable`` import paths)::

    python -m pytest_unitablate discover --model unitablate_demo.fixtures:resnet \\
        --data unitablate_demo.fixtures:test_data --layer layer3.0 --layer layer3.1 \\
        --classes zero,one,two,three,four,five,six,seven,eight,nine --out specs/starter.yaml
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pytest_unitablate.atomic import atomic_write
from pytest_unitablate.spec.rewrite import format_threshold, rounded_threshold
from pytest_unitablate.verdicts.measure import (
    DEFAULT_MIN_SHARE,
    Measurement,
    vacuous_threshold,
    weak_threshold,
)


def is_fixture_name(ref: str) -> bool:
    """A reference without the ``package.module:callable`` form names a pytest fixture.

    >>> is_fixture_name("my_model"), is_fixture_name("pkg.models:net")
    (True, False)
    """
    return ":" not in ref


def load_reference(ref: str) -> Any:
    """Import ``package.module:callable`` and call it; a generator function is returned
    uncalled (data that can replay its batches: each pass calls it again, as with a
    fixture that returns the generator function)."""
    module_name, _, attr = ref.partition(":")
    if not attr:
        raise ValueError(f"{ref!r} is not an import path of the form package.module:callable")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj if inspect.isgeneratorfunction(obj) else obj()


@dataclass(frozen=True)
class Finding:
    """One unit's damage to one class, with paired confidence bounds."""

    layer: str
    unit: int
    target: int
    drop: float
    low: float
    overall_high: float
    #: the same unit and class under the log-probability measure (nats)
    lp_drop: float = math.nan
    lp_low: float = math.nan
    #: why a min_drop / min_logprob_drop bound is too weak to write ("" when it is not)
    weak: str = ""
    lp_weak: str = ""


@dataclass(frozen=True)
class Addressing:
    """How the scanned layers' units are addressed: channels along ``channel_dim`` (or
    the default for N,C,H,W and N,C outputs), or attention heads."""

    unit: str = "channel"
    channel_dim: int | None = None
    num_heads: int | None = None

    def scan_args(self, model: Any, data: Any, layer: str) -> dict[str, Any]:
        """``scan()``'s keyword arguments; refuses an output whose unit dimension is not
        stated and not known from the model's modules to be N,C,H,W or N,C (no silent
        axis: :mod:`pytest_unitablate.core.layout`)."""
        if self.unit == "head":
            return {"unit": "head", "num_heads": self.num_heads}
        from pytest_unitablate.core.data import iter_batches
        from pytest_unitablate.core.layers import probe_layers
        from pytest_unitablate.core.layout import unit_dim_of

        inputs, _ = next(iter(iter_batches(data)))
        shape = probe_layers(model, inputs[:2], [layer], channel_dim=self.channel_dim or 1,
                             strict=False)[layer].shape
        return {"channel_dim": unit_dim_of(model, layer, shape, self.channel_dim)}


def find_units(model: Any, data: Any, layers: Sequence[str], *, top: int = 5,
               level: float = 0.95, min_low: float = 0.05,
               addressing: Addressing = Addressing(), min_share: float = DEFAULT_MIN_SHARE
               ) -> tuple[list[Finding], dict[str, float]]:
    """The ``top`` most class-specific units over ``layers``, and each layer's largest
    overall-drop upper bound (for an ``every_unit`` guard). Each finding carries the
    log-probability drop of the same unit and class, and why either bound would be weak
    (:func:`~pytest_unitablate.verdicts.measure.weak_threshold` with ``min_share``)."""
    from pytest_unitablate.core.scan import scan

    findings: list[Finding] = []
    guards: dict[str, float] = {}
    for layer in layers:
        result = scan(model, data, layer, **addressing.scan_args(model, data, layer))
        base = result.baseline.correct
        labels = result.labels
        masks = _target_masks(data, labels, result.baseline.num_classes)
        assert result.logprobs is not None  # every engine keeps them
        worst_high = -1.0
        for i in range(len(result.units)):  # a full scan: row i is unit i alone
            unit = i
            after = result.correct[i]
            overall = Measurement.from_correct(base, after, level=level)
            worst_high = max(worst_high, overall.ci[1])
            best: Finding | None = None
            for k, mask in masks.items():
                if not mask.any():
                    continue
                m = Measurement.from_correct(base[mask], after[mask], level=level)
                if best is None or m.ci[0] > best.low:
                    best = Finding(layer, unit, k, m.drop, m.ci[0], overall.ci[1])
            base_lp = result.baseline.true_logprob
            if best is None or best.low < min_low:
                # accuracy cannot bound this unit's damage: the log-prob measure may
                best = _by_logprob(layer, unit, masks, base, after, base_lp,
                                   result.logprobs[i], overall.ci[1], level, min_share)
                if best is None:
                    continue
            mask = masks[best.target]
            lp = Measurement.from_logprob(base_lp[mask], result.logprobs[i][mask], level=level)
            acc = Measurement.from_correct(base[mask], after[mask], level=level)
            best = replace(
                best, lp_drop=lp.drop, lp_low=lp.ci[0],
                weak=_weak("min_drop", best.low, acc, min_share),
                lp_weak=_weak("min_logprob_drop", lp.ci[0], lp, min_share))
            findings.append(best)
        guards[layer] = worst_high
    # units accuracy can bound first (by their lower bound), then those only the log-prob
    # measure can (by theirs)
    findings.sort(key=lambda f: (f.weak != "", -(f.low if not f.weak else f.lp_low),
                                 f.layer, f.unit))
    return findings[:top], guards


#: The smallest log-prob lower bound (nats) that makes a unit worth a named check when
#: accuracy cannot bound its damage.
MIN_LOGPROB_LOW = 0.05


def _target_masks(data: Any, labels: Any, num_classes: int) -> dict[int, Any]:
    """Each target's examples: the data's groups (a ``GroupedData``), else the classes."""
    if hasattr(data, "group_ids"):
        ids = data.group_ids()
        return {g: ids == g for g in range(len(data.names))}
    return {k: labels == k for k in range(num_classes)}


def _by_logprob(layer: str, unit: int, masks: dict[int, Any], base: Any, after: Any,
                base_lp: Any, after_lp: Any, overall_high: float, level: float, share: float
                ) -> Finding | None:
    """The target whose log-prob drop has the largest lower bound, when that bound is
    strong enough to guard (at least :data:`MIN_LOGPROB_LOW` and ``share`` of the drop)."""
    best: tuple[float, int, Measurement] | None = None
    for k, mask in masks.items():
        if not mask.any():
            continue
        lp = Measurement.from_logprob(base_lp[mask], after_lp[mask], level=level)
        if best is None or lp.ci[0] > best[0]:
            best = (lp.ci[0], k, lp)
    if best is None or best[0] < MIN_LOGPROB_LOW or _weak("min_logprob_drop", best[0],
                                                           best[2], share):
        return None
    mask = masks[best[1]]
    acc = Measurement.from_correct(base[mask], after[mask], level=level)
    return Finding(layer, unit, best[1], acc.drop, acc.ci[0], overall_high)


def _weak(kind: str, bound: float, m: Measurement, share: float) -> str:
    written = rounded_threshold(kind, bound)
    return vacuous_threshold(kind, written, m.baseline) or \
        weak_threshold(kind, written, m, share) or ""


def render_spec(model_ref: str, data_ref: str | Mapping[str, str],
                classes: Sequence[str] | None, findings: Sequence[Finding],
                guards: dict[str, float], level: float,
                signatures: tuple[str, str] | None = None,
                addressing: Addressing = Addressing(),
                position: int | str | None = None,
                accuracies: Mapping[int, tuple[float, float]] | None = None) -> str:
    """The starter spec as YAML text (comments carry the measurements). ``data_ref`` as a
    mapping: named data groups, which are the targets. ``accuracies`` (class -> (measured
    accuracy, its lower bound)): a ``min_accuracy`` per class, which a model that forgot
    a class fails whatever its units do."""
    groups = list(data_ref) if isinstance(data_ref, Mapping) else None

    def name(k: int) -> str:
        if groups is not None:
            return groups[k]
        return classes[k] if classes else str(k)

    lines = [
        "# Starter spec written by `python -m pytest_unitablate discover`.",
        f"# Thresholds are {level * 100:g}% paired confidence bounds of the measured drops",
        "# (Newcombe for accuracy in pp, Student's t for log p(true class) in nats):",
        "# lower bounds for min_*, upper bounds for max_*. A lower bound that keeps less",
        "# than half of its drop, or that one example meets, is left out (too weak).",
        "unitablate: 1",
        f"model: {model_ref}",
        "data: {" + ", ".join(f"{g}: {r}" for g, r in data_ref.items()) + "}"
        if isinstance(data_ref, Mapping) else f"data: {data_ref}",
    ]
    if position is not None:
        lines.append(f"position: {position}                   # the next token judged")
    if classes and groups is None:
        lines.append(f"classes: [{', '.join(classes)}]")
    lines.append("ablation: zero")
    if not findings:
        lines.append(f"# No named-unit checks: no unit's class drop has a {level * 100:g}% "
                     f"lower bound of at least 5 pp on this data, nor a log-prob drop a "
                     f"strong one of 0.05 nats.")
    if addressing.unit == "head":
        lines.append("unit: head                       # units are attention heads")
    elif addressing.channel_dim is not None:
        lines.append(f"channel_dim: {addressing.channel_dim}"
                     f"                   # the dimension that holds the units")
    lines.append("")
    heads = [f"    num_heads: {addressing.num_heads}"] if addressing.num_heads else []
    noun = "head" if addressing.unit == "head" else "unit"
    if signatures is not None:
        lines.append(f"signatures: {{file: {signatures[0]}, sha256: {signatures[1]}}}  "
                     f"# written by discover (identity: signature)")
    lines.append("checks:")
    for f in findings:
        guards_of = [f"{name(f.target)}: {{{_bounds(f)}}}  # recorded: {_measured(f)}"
                     ] if _bounds(f) else []
        lines += [
            f"  # {noun} {f.unit} of {f.layer}: {'group' if groups else 'class'} "
            f"{name(f.target)} drops "
            f"{f.drop * 100:.1f} pp, log p(true) drops {f.lp_drop:.3f} nats",
            *[f"  # not written: {why}" for why in (f.weak, f.lp_weak) if why],
            f"  - layer: {f.layer}",
            *heads,
            f"    units: [{f.unit}]",
            *(["    identity: signature"] if signatures is not None else []),
            "    expect:",
            *[f"      {g}" for g in guards_of],
            f"      overall: {{max_drop: {format_threshold('max_drop', f.overall_high)}}}",
        ]
    by_layer: dict[str, list[Finding]] = {}
    for f in findings:
        by_layer.setdefault(f.layer, []).append(f)
    for layer in sorted(guards):
        seen: set[int] = set()
        for f in by_layer.get(layer, []):
            if f.target in seen:
                continue
            seen.add(f.target)
            if not _bounds(f):
                continue
            lines += [
                f"  - layer: {layer}            # survives a retrain: any {noun} will do",
                *heads,
                "    any_unit:",
                "      expect:",
                f"        {name(f.target)}: {{{_bounds(f)}}}",
            ]
        if accuracies and layer == min(guards):
            kept = {k: v for k, v in sorted(accuracies.items())
                    if v[1] > 1.0 / max(2, len(accuracies))}  # above chance only
            if kept:
                lines += [
                    f"  - layer: {layer}            # every class's own accuracy (nothing "
                    f"is ablated): a model that forgot a class fails here",
                    *heads,
                    "    any_unit:",
                    "      expect:",
                    *[f"        {name(k)}: {{min_accuracy: "
                      f"{format_threshold('min_accuracy', low)}}}  # recorded: measured "
                      f"{acc * 100:.1f}%" for k, (acc, low) in kept.items()],
                ]
        high = guards[layer]
        if not math.isnan(high) and high >= 0:
            lines += [
                f"  - layer: {layer}            # no single {noun} moves overall accuracy "
                f"much",
                *heads,
                "    every_unit:",
                "      expect:",
                f"        overall: {{max_drop: {format_threshold('max_drop', high)}}}",
            ]
    return "\n".join(lines) + "\n"


def _written(f: Finding) -> list[tuple[str, str, str]]:
    """The class bounds of a finding that are strong enough to write: (constraint, its
    threshold, what was measured), each in its unit."""
    out = []
    if not f.weak:
        out.append(("min_drop", format_threshold("min_drop", f.low),
                    f"{f.drop * 100:.1f} pp"))
    if not f.lp_weak:
        out.append(("min_logprob_drop", format_threshold("min_logprob_drop", f.lp_low),
                    f"{f.lp_drop:.3f} nats"))
    return out


def _measured(f: Finding) -> str:
    """What was measured for the bounds written, in record mode's comment form (a
    failure's page shows it as the reference value)."""
    return "; ".join(f"{kind} measured {value}" for kind, _, value in _written(f))


def _bounds(f: Finding) -> str:
    """The class bounds of a finding that are strong enough to write."""
    return ", ".join(f"{kind}: {threshold}" for kind, threshold, _ in _written(f))


def discover(model_ref: str, data_ref: str | Mapping[str, str], layers: Sequence[str],
             out: Path, *, classes: Sequence[str] | None = None, top: int = 5,
             level: float = 0.95, overwrite: bool = False, identity: bool = False,
             unit: str = "channel", channel_dim: int | None = None,
             num_heads: int | None = None, min_share: float = DEFAULT_MIN_SHARE,
             position: int | str | None = None,
             loader: Callable[[str], Any] | None = None) -> str:
    """Scan, choose units, write the starter spec to ``out``; return its text.

    ``loader`` turns the model and data references into objects (default:
    :func:`load_reference`, import paths; the ``discover`` command passes one that asks
    pytest for the user's conftest fixtures by name).

    With ``identity``, the named-unit checks carry ``identity: signature`` and the units'
    signatures go to ``<out stem>.signatures.json`` next to the spec (hashed in it).
    ``unit="head"`` scans attention heads (``num_heads`` where the module does not say);
    ``channel_dim`` says which dimension of a layer's output holds its units (required for
    outputs the model's modules do not show to be N,C or channels-first N,C,H,W, e.g.
    ``-1`` for a transformer's N,T,C tokens or a Swin block's channels-last N,H,W,C).
    ``data_ref`` may map group names to references (prompt sets): the groups are the
    targets. ``position`` (``"last"`` or an index): a language model judged on its next
    token there, as the spec's ``position:``.
    """
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --force to replace it")
    addressing = Addressing(unit, channel_dim, num_heads)
    load = loader if loader is not None else load_reference
    model = load(model_ref)
    if position is not None:
        from pytest_unitablate.core.next_token import next_token

        model = next_token(model, position)
    if isinstance(data_ref, Mapping):
        from pytest_unitablate.core.data import GroupedData

        data = GroupedData([(g, load(r)) for g, r in data_ref.items()])
    else:
        data = load(data_ref)
    findings, guards = find_units(model, data, layers, top=top, level=level,
                                  addressing=addressing, min_share=min_share)
    if identity and (position is not None or isinstance(data_ref, Mapping)):
        raise ValueError("identity signatures are class profiles: not for data groups or "
                         "a language model's positions (drop --identity)")
    entry = _write_signatures(model, data, findings, out, classes, addressing) \
        if identity else None
    accuracies = None if position is not None or isinstance(data_ref, Mapping) else \
        class_accuracies(model, data)
    outputs = max((f.target for f in findings), default=-1) + 1
    if accuracies is not None:
        outputs = max(outputs, max(accuracies, default=-1) + 1)
    if classes and not isinstance(data_ref, Mapping) and position is None and \
            len(classes) < outputs:
        raise ValueError(f"--classes names {len(classes)} classes, but the data's labels "
                         f"and the model's outputs reach class {outputs - 1}: one name per "
                         f"output, in index order")
    text = render_spec(model_ref, data_ref, classes, findings, guards, level, entry,
                       addressing, position, accuracies)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text)
    return text


#: The confidence level of the per-class ``min_accuracy`` guards discover writes: wide
#: (the 99.9% Wilson lower bound), so an honest retrain's wobble of a few points passes
#: and a class the model forgot fails.
ACCURACY_LEVEL = 0.999


def class_accuracies(model: Any, data: Any, level: float = ACCURACY_LEVEL, most: int = 100
                     ) -> dict[int, tuple[float, float]] | None:
    """Each class's accuracy without ablation and the lower bound of its Wilson interval
    at ``level`` (one pass over the data); ``None`` for more than ``most`` classes (a
    vocabulary)."""
    from pytest_unitablate.core.evaluation import evaluate

    result = evaluate(model, data)
    if result.num_classes > most:
        return None
    correct, labels = result.correct, result.labels
    out = {}
    for k in range(result.num_classes):
        mask = labels == k
        if mask.any():
            m = Measurement.from_correct(correct[mask], correct[mask], level=level)
            out[k] = (float(m.baseline), float(m.bound("min_accuracy", level)))
    return out


def _write_signatures(model: Any, data: Any, findings: Sequence[Finding], out: Path,
                      classes: Sequence[str] | None, addressing: Addressing
                      ) -> tuple[str, str]:
    """Record the chosen units' signatures in the sidecar; return its (file, sha256)."""
    from pytest_unitablate.core.data import data_fingerprint
    from pytest_unitablate.core.identity import damage_profiles, head_profiles
    from pytest_unitablate.spec.signatures import Signatures, write_signatures

    layers: dict[str, dict[int, tuple[float, ...]]] = {}
    for layer in sorted({f.layer for f in findings}):
        if addressing.unit == "head":
            profiles = head_profiles(model, data, layer, num_heads=addressing.num_heads)
        else:
            dim = addressing.scan_args(model, data, layer)["channel_dim"]
            profiles = damage_profiles(model, data, layer, channel_dim=dim)
        layers[layer] = {f.unit: tuple(float(v) for v in profiles[f.unit])
                         for f in findings if f.layer == layer}
    path = out.with_name(f"{out.stem}.signatures.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    sha = write_signatures(path, Signatures(layers=layers, classes=tuple(classes or ()) or None,
                                            data_sha256=data_fingerprint(data)))
    return path.name, sha
