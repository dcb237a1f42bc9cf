"""The review page (``--unitablate-html``): one self-contained HTML file for a reviewer
(torch-free).

What a reviewer needs at a glance: the run (model, weights and data hashes, torch, device,
commit), then the failures first, each with its reason (the failure's headline), layer,
units (the unit matched to a recorded one, or the unit that decided a layer-wide check),
target and every number with its unit (%, pp), then everything that passed. No scripts,
no external URLs; the same bytes for the same model, data and spec.

Example::

    >>> page = review_page([{"id": "conv5-u3-seven-min_drop", "spec": "s.yaml", "line": 9,
    ...                      "layer": "conv5", "units": [3], "target": "seven",
    ...                      "outcome": "failed", "drop": 0.1, "constraint": "min_drop",
    ...                      "threshold": 0.2, "reason": "conv5-u3 seven: drop 10.0 pp, "
    ...                      "needs >= 20.0 pp"}], {"torch_version": "2.14.1"})
    >>> "needs &gt;= 20.0 pp" in page and "1 failed" in page
    True
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pytest_unitablate.verdicts.records import (
    calibration_text,
    describe_required,
    interval_text,
    matched_or_none,
    measured_text,
    tested,
)

#: Outcome -> colour of its badge.
OUTCOME_COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "error": "#6a1b9a",
                   "skipped": "#757575", "xfailed": "#ef6c00", "xpassed": "#ef6c00"}
#: Outcomes listed first, in this order.
SEVERITY = ("failed", "error", "xpassed", "xfailed", "skipped", "passed")

STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
    "h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.15em;margin:1.4em 0 .4em}"
    "table{border-collapse:collapse;margin:.3em 0}"
    "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left;"
    "vertical-align:top}th{background:#f3f3f3}td.num{text-align:right;white-space:nowrap}"
    ".badge{color:#fff;border-radius:3px;padding:1px 6px;font-weight:bold;font-size:12px}"
    ".reason{font-family:ui-monospace,monospace;font-size:12px}"
    "dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:0}"
    "dl.facts dt{font-weight:bold}dl.facts dd{margin:0;font-family:ui-monospace,monospace}"
    ".summary{font-size:1.05em}"
)


def e(text: Any) -> str:
    """HTML-escaped text (``None`` as empty)."""
    return "" if text is None else html.escape(str(text), quote=True)


def badge(outcome: Any) -> str:
    colour = OUTCOME_COLOURS.get(str(outcome), "#444")
    return f'<span class="badge" style="background:{colour}">{e(outcome)}</span>'


def units_text(r: Mapping[str, Any]) -> str:
    """The units column: ``3``, ``h2``, ``15->10`` (matched), ``15->none`` (no match),
    ``any_unit, deciding 7``.

    >>> units_text({"units": [15], "matched_units": [10], "similarity": [0.9],
    ...             "min_similarity": 0.75})
    '15->10 (similarity 0.90)'
    >>> units_text({"mode": "any_unit", "deciding_units": [7]})
    'any_unit; deciding unit 7'
    >>> units_text({"mode": "any_unit", "constraint": "min_accuracy"})
    'none (its own accuracy)'
    """
    if str(r.get("constraint") or "").endswith("_accuracy"):
        return "none (its own accuracy)"
    h = "h" if r.get("unit") == "head" else ""
    units, matched = r.get("units"), r.get("matched_units")
    if units and matched:
        sims = r.get("similarity") or [None] * len(units)
        parts = []
        for u, m, s in zip(units, matched_or_none(r), sims, strict=False):
            if m is None:
                parts.append(f"{h}{u}->none" + (f" (best {s:.2f})" if s is not None else ""))
            else:
                parts.append(f"{h}{u}->{h}{m}" + (f" (similarity {s:.2f})" if s is not None
                                                   else ""))
        return ", ".join(parts)
    if units:
        shown = [f"{h}{u}" for u in units]
        if len(shown) > 8:  # a long group would push the numbers off the page
            return f"{len(shown)} units: {'+'.join(shown[:4])}+...+{shown[-1]}"
        return "+".join(shown)
    mode = str(r.get("mode") or "")
    deciding = r.get("deciding_units")
    if deciding:
        noun = "head" if h else "unit"
        label = f"deciding {noun}" + ("s" if len(deciding) > 1 else "")
        return "; ".join(p for p in (mode, f"{label} {', '.join(f'{h}{u}' for u in deciding)}")
                         if p)
    return mode


def required_text(r: Mapping[str, Any]) -> str:
    """``drop >= 40.0 pp``, ``relative drop <= 10.0%``, or ``not recorded``; a calibrated
    threshold says what it rests on (``(calibrated over 3 reference models: 60.0-95.0
    pp)``), an unguardable one why it was not written."""
    text = describe_required(r.get("constraint"), r.get("threshold"))
    calibrated = calibration_text(r)
    if calibrated:
        text += f" (calibrated {calibrated})"
    if r.get("unguardable"):
        text += " (unguardable over the reference models: not recorded)"
    return text


def sort_for_review(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Failures first, then by spec, line and id."""
    def rank(r: Mapping[str, Any]) -> tuple[Any, ...]:
        outcome = str(r.get("outcome"))
        severity = SEVERITY.index(outcome) if outcome in SEVERITY else len(SEVERITY)
        return (severity, str(r.get("spec")), int(r.get("line") or 0), str(r.get("id")))
    return sorted(records, key=rank)


def items_table(records: Sequence[Mapping[str, Any]]) -> str:
    """One row per item, failures first; numbers carry their units."""
    if not records:
        return "<p>No items.</p>"
    head = ("outcome", "item", "layer", "units", "target", "baseline", "ablated", "drop",
            "95% CI of the drop", "required", "reason")
    rows = []
    for r in sort_for_review(records):
        ci = interval_text(r)
        cells = [
            badge(r.get("outcome")),
            f"{e(r.get('id'))}<br><small>{e(r.get('spec'))}:{e(r.get('line'))}</small>",
            e(r.get("layer")), e(units_text(r)), e(r.get("target")),
        ]
        nums = [measured_text(r, "baseline"), measured_text(r, "ablated"),
                measured_text(r, "drop"), ci]
        row = "".join(f"<td>{c}</td>" for c in cells)
        row += "".join(f'<td class="num">{e(n)}</td>' for n in nums)
        row += f"<td>{e(required_text(r))}</td><td class=\"reason\">{e(r.get('reason'))}</td>"
        rows.append(f"<tr>{row}</tr>")
    header = "".join(f"<th>{e(h)}</th>" for h in head)
    return f'<table class="items"><tr>{header}</tr>{"".join(rows)}</table>'


def run_facts(records: Sequence[Mapping[str, Any]], environment: Mapping[str, Any]
              ) -> list[tuple[str, str]]:
    """(label, value) pairs about the run: versions, device, commit, and per spec the
    model, its weights hash, the data and its fingerprint."""
    facts = [(label, str(environment[key])) for key, label in (
        ("pytest_unitablate_version", "pytest-unitablate"), ("torch_version", "torch"),
        ("device", "device"), ("dtype", "dtype"), ("commit", "commit"))
        if environment.get(key) is not None]
    chosen = " ".join(f"{k}={v}" for k, v in (environment.get("chosen_by") or {}).items())
    if chosen:
        facts.append(("weights chosen by", chosen))
    for t in tested(records):
        spec = t["spec"]
        if t["weights_sha256"]:
            where = f" ({t['checkpoint']})" if t["checkpoint"] else ""
            facts.append((f"{spec}: model", f"{t['model'] or ''} weights sha256 "
                          f"{t['weights_sha256']}{where}".strip()))
        if t["data_sha256"]:
            facts.append((f"{spec}: data", f"{t['data'] or ''} sha256 "
                          f"{t['data_sha256']}".strip()))
        if t["differs_from_recorded"]:
            facts.append((f"{spec}: recorded elsewhere", "; ".join(t["differs_from_recorded"])))
    return facts


def reference_text(r: Mapping[str, Any]) -> str:
    """What the reference model(s) showed for an item, as a failure row shows it beside
    the measurement: a forgotten class's reference baseline, a calibrated threshold's
    range, or the drop recorded for a protected unit.

    >>> reference_text({"forgotten": True, "reference_baseline": 0.87})
    'baseline at least 87.0% on the reference models'
    >>> reference_text({"recorded_drop": 0.45})
    'recorded drop 45.0 pp'
    >>> reference_text({"reference_note": "measured 51.5 pp"})
    'when recorded: measured 51.5 pp'
    """
    if r.get("forgotten") and r.get("reference_baseline") is not None:
        return (f"baseline at least {measured_text({'x': r['reference_baseline']}, 'x')} on "
                f"the reference models")
    calibrated = calibration_text(r)
    if calibrated:
        return calibrated
    if r.get("recorded_drop") is not None:
        recorded = {"drop": r["recorded_drop"], "metric": r.get("metric")}
        return f"recorded drop {measured_text(recorded, 'drop')}"
    if r.get("reference_note"):  # the spec line's comment: what was measured when recorded
        return f"when recorded: {r['reference_note']}"
    return ""


def failures_table(records: Sequence[Mapping[str, Any]]) -> str:
    """The failures, each with what it measured, what the references showed, and the
    next step (the command that re-records it, or what to look at)."""
    head = ("outcome", "item", "units", "target", "baseline", "measured", "required",
            "reference", "reason", "next step")
    rows = []
    for r in sort_for_review(records):
        measured = measured_text(r, "drop") or measured_text(r, "baseline")
        ci = interval_text(r)
        cells = [badge(r.get("outcome")),
                 f"{e(r.get('id'))}<br><small>{e(r.get('spec'))}:{e(r.get('line'))}</small>",
                 e(units_text(r)), e(r.get("target"))]
        row = "".join(f"<td>{c}</td>" for c in cells)
        row += f'<td class="num">{e(measured_text(r, "baseline"))}</td>'
        below = f"<br><small>{e(ci)}</small>" if ci else ""
        row += f'<td class="num">{e(measured)}{below}</td>'
        row += f"<td>{e(required_text(r))}</td><td>{e(reference_text(r))}</td>"
        row += f'<td class="reason">{e(r.get("reason"))}</td>'
        row += f'<td class="reason">{e(r.get("next_step"))}</td>'
        rows.append(f"<tr>{row}</tr>")
    header = "".join(f"<th>{e(h)}</th>" for h in head)
    return f'<table class="items"><tr>{header}</tr>{"".join(rows)}</table>'



def counts_line(records: Sequence[Mapping[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r.get("outcome"))] = counts.get(str(r.get("outcome")), 0) + 1
    order = [k for k in SEVERITY if k in counts] + sorted(set(counts) - set(SEVERITY))
    return ", ".join(f"{counts[k]} {k}" for k in order)


def document(title: str, body: str) -> str:
    """A whole page around ``body``: no scripts, no external URLs."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}'
            f"</title><style>{STYLE}</style></head><body>{body}</body></html>\n")


def facts_list(facts: Sequence[tuple[str, str]]) -> str:
    return ('<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts)
            + "</dl>")


def review_page(records: Sequence[Mapping[str, Any]], environment: Mapping[str, Any],
                title: str = "pytest-unitablate review",
                figures: Sequence[tuple[str, str]] | None = None) -> str:
    """The page: the run's facts, a summary, then every item, failures first, then the
    ``figures`` (``(title, inline SVG)``, drawn by
    :mod:`pytest_unitablate.analysis.review_figures`; ``[]``: a note that the plots need
    the ``analysis`` extra; ``None``: no figure section)."""
    failing = [r for r in records if r.get("outcome") in ("failed", "error", "xpassed")]
    body = [f"<h1>{e(title)}</h1>",
            f'<p class="summary">{len(records)} items: {e(counts_line(records))}</p>',
            "<h2>Run</h2>", facts_list(run_facts(records, environment))]
    if failing:
        body += [f"<h2>Failures ({len(failing)})</h2>", failures_table(failing)]
    body += ["<h2>All items</h2>",
             "<p>Drops are baseline minus ablated, positive when the ablation hurts: "
             "accuracy in percentage points (pp), paired Newcombe intervals; the "
             "log-probability of the true class in nats, Student's t intervals.</p>",
             items_table(records)]
    if figures is not None:
        if figures:
            for caption, svg in figures:
                body += [f"<h2>{e(caption)}</h2>", f'<div class="figure">{svg}</div>']
        else:
            body.append("<p>Plots of the unit x class damage need matplotlib and pandas: "
                        "pip install 'pytest-unitablate[analysis]'.</p>")
    return document(title, "".join(body))


def write_review_page(path: Any, records: Iterable[Mapping[str, Any]],
                      environment: Mapping[str, Any],
                      figures: Sequence[tuple[str, str]] | None = None) -> None:
    """Write :func:`review_page` to ``path`` atomically."""
    from pathlib import Path

    from pytest_unitablate.atomic import atomic_write

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, review_page(list(records), environment, figures=figures))


__all__ = ["OUTCOME_COLOURS", "badge", "counts_line", "document", "e", "facts_list",
           "failures_table", "items_table", "reference_text", "required_text", "review_page",
           "run_facts",
           "sort_for_review", "units_text", "write_review_page"]
