"""An item's record: the fields of the JSON report, the terminal table, the summary line
(torch-free).

Every front end makes the same records: the pytest plugin (one per test item, shipped on
its test report) and :func:`pytest_unitablate.run_spec` (one per item, directly). A record
is a plain dict; :data:`FIELDS` are the ones the JSON report keeps, in order.

Example::

    >>> rec = {"id": "conv5-u3-seven-min_drop", "layer": "conv5", "units": [3],
    ...        "target": "seven", "baseline": 0.9, "ablated": 0.5, "drop": 0.4,
    ...        "constraint": "min_drop", "threshold": 0.2, "outcome": "passed"}
    >>> print(format_table([rec]).splitlines()[2])
    conv5  3      seven   90.0%     50.0%    40.0 pp  drop >= 20.0 pp  passed
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_unitablate.spec.ids import ItemKey
from pytest_unitablate.spec.model import Spec
from pytest_unitablate.verdicts.calibration import Calibrated

#: The JSON report's per-item fields, in order.
FIELDS = (
    "id", "spec", "line", "layer", "unit", "channel_dim", "position", "units", "ablation",
    "target", "target_kind",
    "class_index", "metric", "n", "baseline", "ablated", "drop", "ci_low", "ci_high",
    "constraint", "threshold", "outcome", "p_value", "deciding_units", "ranking_note",
    "units_evaluated", "units_total", "identity", "matched_units", "similarity",
    "min_similarity", "mapping", "dead_units", "recorded_drop", "reason", "problem",
    "calibration_models", "calibration_low", "calibration_high", "unguardable",
    "forgotten", "reference_baseline",
)


def static_record(spec: Spec, key: ItemKey) -> dict[str, Any]:
    """The fields of an item's record that the spec alone decides (known at collection)."""
    check, target = key.check, key.expectation.target
    return {
        "id": key.id,
        "spec": str(spec.path),
        "line": key.line,
        "layer": check.layer,
        "mode": check.mode,
        "unit": spec.unit_for(check),
        "channel_dim": spec.channel_dim_for(check) if spec.unit_for(check) == "channel"
        else None,
        "position": spec.position_for(check),
        "units": list(check.units) if check.mode == "units" else None,
        "ablation": spec.ablation_for(check).label(),
        "target": spec.target_name(target),
        "target_kind": "overall" if target == "overall" else (
            "group" if spec.is_group(target) else "class"),
        "class_index": None if spec.is_group(target) else spec.class_index(target),
        "constraint": key.constraint.kind,
        "threshold": key.constraint.threshold,
        "check_index": check.index,
        "model_ref": spec.model,
        "data_ref": spec.data,
        "mode_key": check.mode_key,
        "target_key": target,
        "class_names": list(spec.classes) if spec.classes else None,
    }


def describe_required(constraint: str | None, threshold: float | None) -> str:
    """What a constraint requires, in its unit: ``drop >= 40.0 pp``, ``relative drop <=
    10.0%``, ``min_drop: not recorded``; empty without a constraint.

    >>> describe_required("min_drop", 0.4), describe_required("max_relative_drop", 0.1)
    ('drop >= 40.0 pp', 'relative drop <= 10.0%')
    """
    if constraint is None:
        return ""
    if threshold is None:
        return f"{constraint}: not recorded"
    op = ">=" if constraint.startswith("min") else "<="
    if constraint.endswith("_accuracy"):
        return f"accuracy {op} {threshold * 100:.1f}%"
    if "logprob" in constraint:
        return f"log-prob drop {op} {threshold:.3f} nats"
    what = "relative drop" if "relative" in constraint else "drop"
    unit = "%" if "relative" in constraint else " pp"
    return f"{what} {op} {threshold * 100:.1f}{unit}"


def calibration_text(r: Mapping[str, Any]) -> str:
    """What a calibrated item's threshold rests on, from its record: ``over 3 reference
    models: 60.0-95.0 pp`` (empty for an item no calibration file speaks of).

    >>> calibration_text({"constraint": "min_drop", "calibration_models": 3,
    ...                   "calibration_low": 0.6, "calibration_high": 0.95})
    'over 3 reference models: 60.0-95.0 pp'
    >>> calibration_text({"constraint": "min_logprob_drop", "calibration_models": 3,
    ...                   "calibration_low": 0.5, "calibration_high": 1.25})
    'over 3 reference models: 0.500-1.250 nats'
    """
    models, low, high = (r.get(k) for k in ("calibration_models", "calibration_low",
                                            "calibration_high"))
    if not models or low is None or high is None:
        return ""
    span = Calibrated(str(r.get("constraint") or ""), threshold=float("nan"),
                      models=int(models), low=float(low), high=float(high)).range_text()
    return f"over {int(models)} reference model{'s' * (int(models) != 1)}: {span}"


def pct(x: Any, suffix: str = "%") -> str:
    """A fraction as a percentage with one decimal and its unit (empty for ``None``).

    >>> pct(0.403), pct(-0.05, " pp"), pct(None)
    ('40.3%', '-5.0 pp', '')
    """
    return "" if x is None else f"{float(x) * 100:.1f}{suffix}"


def measured_text(r: Mapping[str, Any], field: str) -> str:
    """A record's ``baseline``, ``ablated`` or ``drop`` in its metric's unit: accuracy in
    %, a drop in pp; for ``metric: logprob`` the mean log p(true class) and its drop in
    nats. Empty when missing.

    >>> measured_text({"drop": 0.25}, "drop"), measured_text({"baseline": 0.9}, "baseline")
    ('25.0 pp', '90.0%')
    >>> measured_text({"metric": "logprob", "drop": 0.4123}, "drop")
    '0.412 nats'
    """
    x = r.get(field)
    if x is None:
        return ""
    if r.get("metric") == "logprob":
        return f"{float(x):.3f} nats"
    return pct(x, " pp" if field == "drop" else "%")


def interval_text(r: Mapping[str, Any]) -> str:
    """A record's interval of the drop with its unit: ``[11.1, 40.2] pp`` or ``[0.075,
    0.268] nats``; empty without one.

    >>> interval_text({"ci_low": 0.111, "ci_high": 0.402})
    '[11.1, 40.2] pp'
    """
    lo, hi = r.get("ci_low"), r.get("ci_high")
    if lo is None or hi is None:
        return ""
    if str(r.get("constraint") or "").endswith("_accuracy"):  # the accuracy's own interval
        return f"[{pct(lo, '')}, {pct(hi, '')}]%"
    if r.get("metric") == "logprob":
        return f"[{float(lo):.3f}, {float(hi):.3f}] nats"
    return f"[{pct(lo, '')}, {pct(hi, '')}] pp"


def matched_or_none(r: Mapping[str, Any]) -> list[Any]:
    """The unit each recorded unit of an ``identity: signature`` record was matched to,
    ``None`` where none was (or the best candidate is below ``min_similarity``: it was
    not taken to be the recorded unit).

    >>> matched_or_none({"matched_units": [10, 3], "similarity": [0.73, 0.9],
    ...                  "min_similarity": 0.75})
    [None, 3]
    """
    units = list(r.get("matched_units") or [])
    sims = list(r.get("similarity") or [None] * len(units))
    low = r.get("min_similarity")
    return [None if m is None or (s is not None and low is not None and float(s) < float(low))
            else m for m, s in zip(units, sims, strict=False)]


#: Printed under the table: how to read the ``units`` column (every part; a table shows
#: only the parts its rows use, :func:`table_legend`).
TABLE_LEGEND = ("units: the units ablated together (h3: attention head 3); for a "
                "layer-wide check, <mode>:<units> names the check (any_unit, every_unit, "
                "top_units) and the unit(s) that decided its outcome (any_unit and "
                "every_unit ablate each alone, top_units together); 10->3: identity: "
                "signature matched the recorded unit 10 to unit 3 of the model under test; "
                "15->none: no unit is similar enough (the best candidate is not ablated)")


def table_legend(records: Sequence[Mapping[str, Any]]) -> str:
    """The legend of the ``units`` column for these rows: only what they use (a CNN's
    table says nothing of heads, a spec without identity nothing of matching).

    >>> table_legend([{"units": [3]}])
    'units: the units ablated together'
    >>> table_legend([{"unit": "head", "mode": "any_unit", "deciding_units": [2]}])
    'units: the heads ablated together (h3: attention head 3); <mode>:<units> names a \
layer-wide check (any_unit) and the unit(s) that decided its outcome, each ablated alone'
    """
    heads = any(r.get("unit") == "head" for r in records)
    parts = ["units: the heads ablated together (h3: attention head 3)" if heads
             else "units: the units ablated together"]
    modes = [m for m in ("any_unit", "every_unit", "top_units")
             if any(r.get("mode") == m and not str(r.get("constraint") or "").endswith(
                 "_accuracy") for r in records)]
    if modes:
        alone = [m for m in modes if m != "top_units"]
        how = ("each ablated alone" if not set(modes) - set(alone) else "together"
               if not alone else f"{' and '.join(alone)} ablate each alone, top_units "
               f"together")
        parts.append(f"<mode>:<units> names a layer-wide check ({', '.join(modes)}) and the "
                     f"unit(s) that decided its outcome, {how}")
    if any(r.get("matched_units") for r in records):
        parts.append("10->3: identity: signature matched the recorded unit 10 to unit 3 of "
                     "the model under test")
    if any(m is None for r in records for m in (matched_or_none(r)
                                                  if r.get("matched_units") else [])):
        parts.append("15->none: no unit is similar enough (the best candidate is not "
                     "ablated)")
    return "; ".join(parts)


def summary_line(records: Sequence[Mapping[str, Any]], report: Path | None) -> str:
    """One line: how many checks ran, how many failed, and where the report is.

    An item is one constraint of one target (one test); a check is one entry of a spec's
    ``checks:`` list, which yields one item per constraint.

    >>> summary_line([{"outcome": "passed", "spec": "s.yaml", "check_index": 0},
    ...               {"outcome": "failed", "spec": "s.yaml", "check_index": 0}],
    ...              Path("r.json"))
    'unitablate: 2 items of 1 check, 1 failed; report: r.json'
    """
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r.get("outcome"))] = counts.get(str(r.get("outcome")), 0) + 1
    failed = counts.get("failed", 0) + counts.get("error", 0)
    checks = len({(r.get("spec"), r.get("check_index")) for r in records})
    parts = [f"{len(records)} item{'s' * (len(records) != 1)} of {checks} "
             f"check{'s' * (checks != 1)}", f"{failed} failed"]
    parts += [f"{counts[k]} {k}" for k in ("skipped", "xfailed", "xpassed") if counts.get(k)]
    where = f"; report: {report}" if report is not None else ""
    return f"unitablate: {', '.join(parts)}{where}"


#: Said when a run exits 2 because every failure is a spec problem.
SPEC_PROBLEMS_LINE = ("unitablate: exit 2: every failure is a spec problem (the spec does not "
                      "fit the model or data), not a regression of the model")


def spec_problems_only(records: Iterable[Mapping[str, Any]]) -> bool:
    """True when something failed and every failing item is a spec problem (``problem:
    "spec"``: an unknown layer, a unit out of range, a loader that shuffles, inputs of the
    wrong dtype, found while binding or measuring): the run then exits 2, as a spec that
    does not load does, so CI tells a broken spec from a broken model. A missed threshold,
    a forgotten class, a broken model (``problem: "model"``, NaN logits) or an unguardable
    calibration keep exit 1.

    >>> spec_problems_only([{"outcome": "error", "problem": "spec"}, {"outcome": "passed"}])
    True
    >>> spec_problems_only([{"outcome": "error", "problem": "spec"}, {"outcome": "failed"}])
    False
    >>> spec_problems_only([{"outcome": "passed"}])
    False
    """
    failing = [r for r in records if r.get("outcome") in ("failed", "error")
               or r.get("unguardable")]
    return bool(failing) and all(r.get("problem") == "spec" and not r.get("unguardable")
                                 for r in failing)


def spec_problems_line(records: Iterable[Mapping[str, Any]]) -> str:
    """When spec problems fail beside other failures (the run exits 1): how many of the
    failures are the spec's, so a reader fixes those lines and looks at the rest as the
    model's. Empty when there are none.

    >>> spec_problems_line([{"outcome": "error", "problem": "spec"}, {"outcome": "failed"}])
    'unitablate: 1 of 2 failures are spec problems (problem: spec in the report): fix those \
spec lines; the others are the model under test'
    """
    failing = [r for r in records if r.get("outcome") in ("failed", "error")]
    spec = [r for r in failing if r.get("problem") == "spec"]
    if not spec:
        return ""
    return (f"unitablate: {len(spec)} of {len(failing)} failures are spec problems (problem: "
            f"spec in the report): fix those spec lines; the others are the model under test")


def format_table(records: Sequence[Mapping[str, Any]]) -> str:
    """The terminal summary table: layer, units, target, baseline, ablated, drop, required,
    outcome, then the legend of the ``units`` column."""
    header = ("layer", "units", "target", "baseline", "ablated", "drop", "required", "outcome")
    rows = []
    for r in records:
        units = r.get("units")
        deciding = r.get("deciding_units")
        matched = r.get("matched_units")
        h = "h" if r.get("unit") == "head" else ""
        if units and matched:
            unit_text = "+".join(f"{h}{u}->{h}{m}" if m is not None else f"{h}{u}->none"
                                 for u, m in zip(units, matched_or_none(r), strict=False))
        elif units:
            unit_text = "+".join(f"{h}{u}" for u in units)
        elif deciding:
            unit_text = f"{r.get('mode', '')}:{'+'.join(f'{h}{u}' for u in deciding)}".lstrip(
                ":")
        else:
            unit_text = str(r.get("mode") or "")
        rows.append((
            str(r.get("layer", "")), unit_text, str(r.get("target", "")),
            measured_text(r, "baseline"), measured_text(r, "ablated"), measured_text(r, "drop"),
            describe_required(r.get("constraint"), r.get("threshold")),
            str(r.get("outcome", "")),
        ))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    lines.append(table_legend(records))
    return "\n".join(lines)


def engine_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per swept layer: the scan engine that ran, and why a faster one did not.

    >>> engine_lines([{"spec": "s.yaml", "layer": "layer1", "engine": "naive",
    ...                "engine_reason": "torch.fx cannot trace the model"}])
    ['s.yaml layer1: naive (torch.fx cannot trace the model)']
    >>> engine_lines([{"spec": "s.yaml", "layer": "layer3", "engine": "prefix",
    ...                "engine_plan": "4 unit(s) x 64 example(s) per suffix pass"}])
    ['s.yaml layer3: prefix, 4 unit(s) x 64 example(s) per suffix pass']
    """
    seen: dict[tuple[str, str], str] = {}
    for r in records:
        if r.get("engine"):
            reason = f", {r['engine_plan']}" if r.get("engine_plan") else ""
            reason += f" ({r['engine_reason']})" if r.get("engine_reason") else ""
            where = (Path(str(r.get("spec", ""))).name, str(r.get("layer", "")))
            seen.setdefault(where, f"{r['engine']}{reason}")
    return [f"{spec} {layer}: {text}" for (spec, layer), text in seen.items()]


def sort_records(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Records in a run-independent order: (spec, line, id)."""
    return sorted((dict(r) for r in records),
                  key=lambda r: (str(r.get("spec")), int(r.get("line") or 0), str(r.get("id"))))


#: What the run file (``<report>.run.json``, next to the report) holds.
RUN_ABOUT = ("measured about this run, not about the model: which scan engine ran where and "
             "how it cut its work, chosen partly by timing on this machine, and the torch "
             "thread counts the items ran with; it may differ "
             "between runs of the same spec, which is why it is not in the report (the "
             "report is the same, byte for byte, for the same model, data and spec)")


def engines(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per swept (spec, layer): the engine that ran, why, and its plan."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for r in sort_records(records):
        if r.get("engine"):
            seen.setdefault((str(r.get("spec")), str(r.get("layer"))), {
                "spec": r.get("spec"), "layer": r.get("layer"), "engine": r.get("engine"),
                "reason": r.get("engine_reason"), "plan": r.get("engine_plan")})
    return list(seen.values())


def tested(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """What each spec tested: one entry per spec with its ``model`` and ``data``
    references, the sha256 (first 16 hex digits) of the weights and of the evaluation
    data, the ``checkpoint`` the model's fixture named (its ``unitablate_checkpoint``
    attribute; ``None`` when it said nothing), and ``differs_from_recorded``: what of the
    environment the spec's thresholds were recorded in differs now (torch, device, dtype,
    data; empty when nothing does).

    >>> tested([{"spec": "s.yaml", "model_ref": "net", "data_ref": "digits",
    ...          "weights_sha256": "ab12", "data_sha256": "cd34"}])[0]["weights_sha256"]
    'ab12'
    """
    out: dict[str, dict[str, Any]] = {}
    for r in sort_records(records):
        entry = out.setdefault(str(r.get("spec")), {
            "spec": r.get("spec"), "model": r.get("model_ref"), "weights_sha256": None,
            "checkpoint": None, "data": r.get("data_ref"), "data_sha256": None,
            "differs_from_recorded": []})
        for field in ("weights_sha256", "checkpoint", "data_sha256"):
            if entry[field] is None and r.get(field):
                entry[field] = r[field]
        for line in r.get("provenance") or ():
            if line not in entry["differs_from_recorded"]:
                entry["differs_from_recorded"].append(line)
    return list(out.values())


def spec_lines(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """What each spec is about, above the table (``-v``): its model and weights, its data,
    and its checks by layer.

    >>> print(spec_lines([{"spec": "s.yaml", "model_ref": "net", "data_ref": "digits",
    ...     "weights_sha256": "ab12", "checkpoint": "c.pt", "layer": "conv5",
    ...     "check_index": 0, "target": "seven", "n": 60}])[0])
    s.yaml: model net (weights sha256 ab12, c.pt) on digits: 1 check of conv5 (targets seven)
    """
    records = sort_records(records)
    out = []
    for t in tested(records):
        mine = [r for r in records if r.get("spec") == t["spec"]]
        layers = list(dict.fromkeys(str(r.get("layer")) for r in mine))
        checks = len({r.get("check_index") for r in mine})
        targets = list(dict.fromkeys(str(r.get("target")) for r in mine))
        shown = ", ".join(targets[:6]) + (f", ... ({len(targets)} in all)"
                                           if len(targets) > 6 else "")
        weights = ", ".join(str(x) for x in (
            f"weights sha256 {t['weights_sha256']}" if t["weights_sha256"] else None,
            t["checkpoint"]) if x)
        out.append(f"{t['spec']}: model {t['model']}{f' ({weights})' if weights else ''} on "
                   f"{t['data']}: {checks} check{'s' * (checks != 1)} of "
                   f"{', '.join(layers)} (targets {shown})")
    return out


def provenance_lines(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per spec whose recorded environment differs from this run's (said once
    per run, in the summary, not as a warning from every process).

    >>> provenance_lines([{"spec": "s.yaml", "provenance": ["torch_version: recorded 2.1.0, "
    ...                    "now 2.4.0"]}])
    ['s.yaml: thresholds were recorded in another environment (torch_version: recorded \
2.1.0, now 2.4.0); re-record if the differences are intended']
    """
    return [f"{t['spec']}: thresholds were recorded in another environment "
            f"({'; '.join(t['differs_from_recorded'])}); re-record if the differences are "
            f"intended" for t in tested(records) if t["differs_from_recorded"]]


def build_report(records: Iterable[Mapping[str, Any]], environment: Mapping[str, Any]
                 ) -> dict[str, Any]:
    """The JSON report document: environment fields, what each spec tested
    (:func:`tested`) and one record per item, the same for the same model, data and spec,
    byte for byte (serial or under xdist)."""
    records = list(records)
    items = [{name: r.get(name) for name in FIELDS} for r in sort_records(records)]
    return {**environment, "tested": tested(records), "items": items}


def build_run(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The run file's document (:data:`RUN_ABOUT`).

    >>> build_run([{"torch_threads": 2}, {"torch_threads": 1}, {}])["torch_threads"]
    [1, 2]
    """
    records = list(records)
    threads = sorted({int(r["torch_threads"]) for r in records
                      if r.get("torch_threads") is not None})
    return {"about": RUN_ABOUT, "torch_threads": threads, "engines": engines(records)}


def run_path(report: str | os.PathLike[str]) -> Path:
    """Where the run file of ``report`` goes: ``r.json`` -> ``r.run.json``.

    >>> str(run_path("out/unitablate.json"))
    'out/unitablate.run.json'
    """
    path = Path(report)
    return path.with_name(f"{path.stem}.run{path.suffix or '.json'}")


def write_json(path: str | os.PathLike[str], document: Mapping[str, Any]) -> None:
    """Write ``document`` to ``path`` atomically (tmp file in the same folder, then replace)."""
    from pytest_unitablate.atomic import atomic_write

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, json.dumps(document, indent=2, sort_keys=False) + "\n")


__all__ = ["FIELDS", "RUN_ABOUT", "SPEC_PROBLEMS_LINE", "TABLE_LEGEND", "build_report", "build_run",
           "describe_required", "engine_lines", "engines", "format_table", "interval_text",
           "matched_or_none", "measured_text", "pct", "provenance_lines", "run_path",
           "sort_records", "spec_lines", "spec_problems_line", "spec_problems_only",
           "static_record", "summary_line", "table_legend", "tested", "write_json"]
