"""Calibrated thresholds: every item measured on several reference models (torch-free).

One model's measurement says how sure we are about *that* model on this data (its
sampling interval). What an honest retrain (same recipe and data, another seed) may
change is training noise: which units specialise, and how strongly. Only several reference
models show it. Record mode ``calibrate`` runs once per reference model; each run adds
that model's measurement of every item (keyed by the weights' sha256, so the same model
twice counts once) to the calibration file beside the spec, ``<spec>.calibration.json``,
and the thresholds are rewritten from all the models recorded so far by
:func:`calibrated_threshold`.

The rule (derived on the demo models in ``docs/calibration.md``): with the point
estimates ``v_1..v_K`` and the sampling bounds ``b_1..b_K`` (the bound one-model record
mode writes) of K >= :data:`MIN_MODELS` models,

* a ``min_*`` threshold is ``min(b_i) * (min(v_i) / max(v_i)) ** WIDEN``: the lowest
  sampling bound, shrunk by the ratio the references span, squared. Effects of a unit
  vary by factors across seeds (a class's best unit costs it 0.5 to 2.3 nats), so the
  widening is multiplicative; a reference with no effect gives a threshold of 0.
* a ``max_*`` threshold is ``max(b_i) + WIDEN * (max(v_i) - min(v_i))``: the highest
  sampling bound plus twice the range; ``min_accuracy`` the mirror image,
  ``min(b_i) - WIDEN * (max(v_i) - min(v_i))`` (a class's accuracy moves by points).

The sampling bound covers the evaluation data; the widening covers a new seed falling
outside the references' range (with three references, one seed in two lies outside it).
A calibrated threshold that could not fail is not written: the item is *unguardable*
(:func:`unguardable_reason`).

Example::

    >>> points = [Point(0.60, 0.50), Point(0.95, 0.86), Point(0.80, 0.70)]
    >>> c = calibrated_threshold("min_drop", points)
    >>> round(c.threshold, 3), c.models, c.range_text()
    (0.199, 3, '60.0-95.0 pp')
    >>> round(calibrated_threshold("max_drop", [Point(0.05, 0.08)] * 2 + [Point(0.1, 0.14)]
    ...                            ).threshold, 3)
    0.24
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_unitablate.spec.rewrite import rounded_threshold
from pytest_unitablate.verdicts.measure import drop_text, metric_of, vacuous_threshold

#: The calibration file's format version (its ``unitablate_calibration`` key).
FORMAT = 1
#: Reference models a calibrated threshold needs (fewer: the measurements are kept and
#: nothing is written yet).
MIN_MODELS = 3
#: The widening exponent of a ``min_*`` threshold and the multiple of the range added
#: to a ``max_*`` one (chosen on held-back seeds: ``python -m unitablate_demo.guard_bench``).
WIDEN = 2.0
#: A calibrated ``min_*`` threshold must keep at least this share of the smallest effect
#: the reference models showed; below it the honest spread reaches what a destroyed unit
#: shows (a class's best unit with its role spread over many units keeps 5-30% of an
#: honest one's log-prob drop on the demo models), and the item is unguardable.
MIN_SHARE = 0.25
#: The suffix of the calibration file beside a spec: ``resnet.yaml`` ->
#: ``resnet.yaml.calibration.json``.
SUFFIX = ".calibration.json"


def calibration_path(spec_path: str | os.PathLike[str]) -> Path:
    """Where the calibration of the spec at ``spec_path`` lives.

    >>> calibration_path("specs/resnet.yaml").as_posix()
    'specs/resnet.yaml.calibration.json'
    """
    path = Path(spec_path)
    return path.with_name(path.name + SUFFIX)


@dataclass(frozen=True)
class Point:
    """One reference model's measurement of one item, in the item's unit (fractions for
    accuracy, nats for log-prob): ``value`` the point estimate, ``bound`` the sampling
    bound one-model record mode would write (lower for ``min_*``, upper for ``max_*``),
    ``ci`` the paired interval, ``n`` the examples, ``baseline`` the target's baseline."""

    value: float
    bound: float
    ci: tuple[float, float] = (math.nan, math.nan)
    n: int = 0
    baseline: float = math.nan

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (an unknown number is ``null``)."""
        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {"value": self.value, "bound": self.bound, "ci_low": num(self.ci[0]),
                "ci_high": num(self.ci[1]), "n": self.n, "baseline": num(self.baseline)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Point:
        def num(key: str) -> float:
            value = data.get(key)
            return math.nan if value is None else float(value)

        return cls(float(data["value"]), float(data["bound"]), (num("ci_low"), num("ci_high")),
                   int(data.get("n") or 0), num("baseline"))


@dataclass(frozen=True)
class Calibrated:
    """A calibrated threshold and what it rests on."""

    kind: str
    threshold: float
    models: int
    low: float  # the smallest and largest value measured over the models
    high: float
    n: int = 0  # the fewest examples and the lowest baseline of the target over the models
    baseline: float = math.nan

    def range_text(self) -> str:
        """``60.0-95.0 pp`` (or ``0.120-0.410 nats``, ``98.8-100.0%``)."""
        lo, hi = drop_text(self.kind, self.low), drop_text(self.kind, self.high)
        unit = lo.rsplit(" ", 1)[1] if " " in lo else ""
        if unit and hi.endswith(unit):
            return f"{lo.rsplit(' ', 1)[0]}-{hi}"
        if lo.endswith("%") and hi.endswith("%"):
            return f"{lo[:-1]}-{hi}"
        return f"{lo}-{hi}"

    def rests_on(self) -> str:
        """``over 3 models: measured 60.0-95.0 pp``."""
        return f"over {self.models} model{'s' * (self.models != 1)}: measured " \
               f"{self.range_text()}"


def multiplicative(kind: str) -> bool:
    """Whether ``kind`` is widened by a ratio (a ``min_*`` drop: an effect that varies by
    factors) rather than by a range (``max_*``, and ``min_accuracy``: an accuracy near 1
    moves by points, not factors)."""
    return kind.startswith("min") and not kind.endswith("_accuracy")


def spread(kind: str, points: Sequence[Point]) -> float:
    """How far apart the models' values lie: for a ``min_*`` drop the ratio ``min / max``
    (1 when they agree, 0 when one has no effect), otherwise the range ``max - min``.

    >>> spread("min_drop", [Point(0.3, 0.2), Point(0.6, 0.5)])
    0.5
    >>> round(spread("min_accuracy", [Point(0.9, 0.85), Point(0.95, 0.9)]), 3)
    0.05
    """
    values = [p.value for p in points]
    if multiplicative(kind):
        return min(values) / max(values) if min(values) > 0 else 0.0
    return max(values) - min(values)


def calibrated_threshold(kind: str, points: Sequence[Point], widen: float = WIDEN,
                         pooled: float | None = None) -> Calibrated:
    """The threshold of a ``kind`` constraint from several models' ``points`` (the rule of
    the module docstring). ``pooled``: the typical :func:`spread` of the items of the same
    layer, check mode and constraint kind; the item's own spread is widened to it (three
    models that happen to agree on one item do not make that item safe). Needs at least
    one point; callers require :data:`MIN_MODELS`."""
    if not points:
        raise ValueError("calibrated_threshold needs at least one model's measurement")
    values = [p.value for p in points]
    own = spread(kind, points)
    if multiplicative(kind):
        low = min(p.bound for p in points)
        ratio = own if pooled is None else min(own, pooled)
        threshold = low * ratio ** widen if low > 0 else low
    else:
        width = own if pooled is None else max(own, pooled)
        threshold = min(p.bound for p in points) - widen * width if kind.startswith("min") \
            else max(p.bound for p in points) + widen * width
    return Calibrated(kind=kind, threshold=threshold, models=len(points), low=min(values),
                      high=max(values), n=min(p.n for p in points),
                      baseline=min(p.baseline for p in points))


def unguardable_reason(kind: str, found: Calibrated, floor: float = 0.0) -> str | None:
    """Why the calibrated threshold ``found`` cannot guard (the honest spread reaches what a
    destroyed unit shows), or ``None``: written as the spec will hold it, it could not fail
    (at or below 0, below the record ``floor``, or a ``max_*`` allowing every drop of the
    target's lowest baseline), or one example of the fewest the models had meets a
    ``min_*`` accuracy threshold.

    >>> c = calibrated_threshold("min_drop", [Point(0.016, 0.0, n=60, baseline=0.98),
    ...     Point(0.885, 0.8, n=60, baseline=1.0), Point(0.803, 0.7, n=60, baseline=1.0)])
    >>> unguardable_reason("min_drop", c)
    'a min_drop of 0.0 pp (at or below 0) passes whatever the ablation does'
    >>> c = calibrated_threshold("min_drop", [Point(0.3, 0.2, n=60, baseline=0.98)] * 3)
    >>> unguardable_reason("min_drop", c) is None
    True
    """
    n, baseline = found.n, found.baseline
    written = rounded_threshold(kind, found.threshold)
    reason = vacuous_threshold(kind, written, baseline, floor)
    if reason is not None:
        return reason
    if kind.startswith("min") and metric_of(kind) == "accuracy" and n > 0 and \
            not kind.endswith("_accuracy"):
        one = 1.0 / n / (baseline if "relative" in kind and baseline > 0 else 1.0)
        if written <= one + 1e-12:
            return (f"a {kind} of {drop_text(kind, written)} is met by one example of {n} "
                    f"({drop_text(kind, one)}) flipping to wrong")
    if kind.startswith("min") and found.low > 0 and written < MIN_SHARE * found.low - 1e-12:
        kept = math.floor(100 * written / found.low + 1e-9)  # never "25% (less than 25%)"
        return (f"a {kind} of {drop_text(kind, written)} keeps {kept}% of the smallest effect "
                f"the models showed ({drop_text(kind, found.low)}; less than "
                f"{MIN_SHARE:.0%}): a unit that lost most of its role would still pass")
    return None


@dataclass
class ItemCalibration:
    """An item's measurements by model (weights sha256), for one item definition."""

    definition: str
    kind: str
    points: dict[str, Point] = field(default_factory=dict)


@dataclass
class CalibrationFile:
    """The calibration file of one spec: its models and every item's measurements.

    >>> c = CalibrationFile()
    >>> c.add("a" * 64, "conv5-u3-seven-min_drop", "def", "min_drop", Point(0.3, 0.2))
    >>> c.points("conv5-u3-seven-min_drop", "def")
    [Point(value=0.3, bound=0.2, ci=(nan, nan), n=0, baseline=nan)]
    >>> c.points("conv5-u3-seven-min_drop", "another definition")
    []
    """

    models: dict[str, dict[str, str]] = field(default_factory=dict)
    items: dict[str, ItemCalibration] = field(default_factory=dict)

    def points(self, item_id: str, definition: str, *, leave_out: str | None = None
               ) -> list[Point]:
        """The item's points (none when the file measured another definition under that
        id), without model ``leave_out``; ordered by model."""
        item = self.items.get(item_id)
        if item is None or item.definition != definition:
            return []
        return [p for sha, p in sorted(item.points.items()) if sha != leave_out]

    def calibrated(self, item_id: str, definition: str, widen: float = WIDEN
                   ) -> Calibrated | None:
        """The item's calibrated threshold from every model recorded (``None`` with fewer
        than :data:`MIN_MODELS`), its spread pooled over the items of the same group
        (:func:`group_of`: layer, check mode, unit kind and constraint kind) as the median
        spread of those with enough models."""
        points = self.points(item_id, definition)
        item = self.items.get(item_id)
        if item is None or len(points) < MIN_MODELS:
            return None
        group = group_of(definition)
        spreads = sorted(spread(other.kind, list(other.points.values()))
                         for other in self.items.values()
                         if group_of(other.definition) == group
                         and len(other.points) >= MIN_MODELS)
        pooled = _median(spreads) if spreads else None
        return calibrated_threshold(item.kind, points, widen, pooled)

    def add(self, sha256: str, item_id: str, definition: str, kind: str, point: Point,
            model: Mapping[str, str] | None = None) -> None:
        """Add (or replace) model ``sha256``'s point of an item. A changed definition
        (another layer, units, ablation or target under the same id) starts afresh."""
        item = self.items.get(item_id)
        if item is None or item.definition != definition or item.kind != kind:
            item = self.items[item_id] = ItemCalibration(definition, kind)
        item.points[sha256] = point
        self.models.setdefault(sha256, {}).update(model or {})

    def to_text(self) -> str:
        """Stable JSON (sorted keys, one model per key): diffs review well."""
        data = {
            "unitablate_calibration": FORMAT,
            "rule": {"name": "widened envelope", "widen": WIDEN,
                     "min_models": MIN_MODELS},
            "models": self.models,
            "items": {k: {"definition": v.definition, "constraint": v.kind,
                          "points": {s: p.to_json() for s, p in sorted(v.points.items())}}
                      for k, v in sorted(self.items.items())},
        }
        return json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_text(cls, text: str, where: str) -> CalibrationFile:
        """Parse a calibration file; a problem raises :class:`CalibrationFileError`
        naming ``where``."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("unitablate_calibration") != FORMAT:
                raise ValueError(f"not a calibration file of format {FORMAT} "
                                 f"(unitablate_calibration: {FORMAT} missing)")
            items = {
                str(k): ItemCalibration(str(v["definition"]), str(v["constraint"]),
                                        {str(s): Point.from_json(p)
                                         for s, p in v["points"].items()})
                for k, v in data.get("items", {}).items()}
            models = {str(k): {str(a): str(b) for a, b in v.items()}
                      for k, v in data.get("models", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CalibrationFileError(f"{where}: {exc}; delete it and calibrate again") \
                from None
        return cls(models=models, items=items)

    @classmethod
    def read(cls, path: Path) -> CalibrationFile:
        """The file at ``path``, or an empty calibration when there is none."""
        if not path.exists():
            return cls()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CalibrationFileError(f"{path}: cannot be read ({exc})") from None
        return cls.from_text(text, str(path))


class CalibrationFileError(Exception):
    """A calibration file that cannot be read or parsed."""


def group_of(definition: str) -> str:
    """The items whose spreads are pooled: the same layer, check mode, unit kind, axis,
    ablation and constraint kind (any target, any units).

    >>> d = definition_of({"layer": "conv5", "mode": "any_unit", "target": "seven",
    ...                    "constraint": "min_drop", "ablation": "zero"})
    >>> group_of(d) == group_of(d.replace("seven", "two"))
    True
    """
    data = json.loads(definition)
    return json.dumps({k: v for k, v in data.items() if k not in ("target", "units")},
                      sort_keys=True)


def _median(values: Sequence[float]) -> float:
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def definition_of(record: Mapping[str, Any]) -> str:
    """What an item measures, from its static record: the fields that change the number
    (layer, unit kind and axis, units or layer-wide mode, ablation, target, constraint, and
    a language model's position).
    Points measured under another definition are not mixed in.

    >>> d = definition_of({"layer": "conv5", "mode": "units", "units": [3],
    ...                    "target": "seven", "constraint": "min_drop", "ablation": "zero"})
    >>> d[:60]
    '{"ablation": "zero", "channel_dim": null, "constraint": "min'
    """
    keys = ("layer", "mode", "unit", "channel_dim", "units", "ablation", "target",
            "constraint")
    found = {k: record.get(k) for k in keys}
    if record.get("position") is not None:  # a language model's next-token position
        found["position"] = record["position"]
    return json.dumps(found, sort_keys=True)
