"""What changed between two runs of the same specs (torch-free):
``python -m pytest_unitablate compare REFERENCE.json CANDIDATE.json [--html out.html]``.

Both files are JSON reports (``--unitablate-report``, ``check --report``). Items are paired
by spec and id. A change is one of:

* **baseline**: a target's accuracy without any ablation moved (once per spec and target:
  the model itself changed);
* **outcome**: the item passed in one run and failed (or errored, ...) in the other;
* **drop**: the candidate's drop lies outside the reference's paired confidence interval
  (a move that chance alone explains rarely), or the reverse;
* **identity**: the unit ablated for a recorded unit (``matched_units``), or the unit that
  decided a layer-wide check (``deciding_units``), is another one;
* **added** / **removed**: an item only one of the runs has.

Example::

    >>> ref = {"items": [{"spec": "s.yaml", "id": "a", "outcome": "passed", "drop": 0.5,
    ...                   "ci_low": 0.4, "ci_high": 0.6}]}
    >>> new = {"items": [{"spec": "s.yaml", "id": "a", "outcome": "failed", "drop": 0.1,
    ...                   "ci_low": 0.0, "ci_high": 0.2}]}
    >>> [c.kind for c in compare_reports(ref, new)]
    ['outcome', 'drop']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from pytest_unitablate.verdicts.records import (
    calibration_text,
    interval_text,
    matched_or_none,
    measured_text,
)
from pytest_unitablate.verdicts.review_page import (
    badge,
    document,
    e,
    facts_list,
    units_text,
)

#: The kinds of change, in the order they are listed.
KINDS = ("baseline", "outcome", "drop", "identity", "added", "removed")


@dataclass(frozen=True)
class Change:
    """One difference between the reference and the candidate run."""

    kind: str
    spec: str
    id: str
    text: str  # what changed, in words and numbers with their units
    reference: Mapping[str, Any] | None
    candidate: Mapping[str, Any] | None


def _outside(value: Any, low: Any, high: Any) -> bool:
    if value is None or low is None or high is None:
        return False
    return not float(low) - 1e-12 <= float(value) <= float(high) + 1e-12


def _interval(r: Mapping[str, Any]) -> str:
    return interval_text(r)


def compare_reports(reference: Mapping[str, Any], candidate: Mapping[str, Any]
                    ) -> list[Change]:
    """Every change from ``reference`` to ``candidate`` (two JSON report documents)."""
    refs, news = reference.get("items", []), candidate.get("items", [])
    # a spec path is as the run was invoked (relative, or absolute with check): when the
    # two runs name their specs differently, pair them by file name
    same = {str(r.get("spec")) for r in refs} == {str(r.get("spec")) for r in news}

    def spec_of(r: Mapping[str, Any]) -> str:
        return str(r.get("spec")) if same else PurePath(str(r.get("spec"))).name

    ref = {(spec_of(r), str(r.get("id"))): r for r in refs}
    new = {(spec_of(r), str(r.get("id"))): r for r in news}
    changes: list[Change] = []
    seen: set[tuple[str, str, str]] = set()
    for key in sorted(set(ref) & set(new)):
        a, b = ref[key], new[key]
        where = (key[0], str(a.get("target")), str(a.get("metric") or "accuracy"))
        if where in seen or a.get("baseline") is None or b.get("baseline") is None:
            continue
        if abs(float(a["baseline"]) - float(b["baseline"])) > 1e-12:
            seen.add(where)
            what = "mean log p(true)" if a.get("metric") == "logprob" else "accuracy"
            changes.append(Change("baseline", key[0], str(a.get("target")),
                                  f"baseline {what} {measured_text(a, 'baseline')} -> "
                                  f"{measured_text(b, 'baseline')}", a, b))
    for key in sorted(set(ref) | set(new)):
        a, b = ref.get(key), new.get(key)
        spec, item = key
        if a is None or b is None:
            kind = "added" if a is None else "removed"
            here = b if a is None else a
            assert here is not None
            changes.append(Change(kind, spec, item, f"{kind}: {here.get('outcome')} in the "
                                  f"{'candidate' if a is None else 'reference'} only", a, b))
            continue
        if a.get("outcome") != b.get("outcome"):
            calibrated = calibration_text(b) or calibration_text(a)
            rests = f" (the threshold is calibrated {calibrated})" if calibrated else ""
            changes.append(Change("outcome", spec, item,
                                  f"{a.get('outcome')} -> {b.get('outcome')}{rests}", a, b))
        moved = _outside(b.get("drop"), a.get("ci_low"), a.get("ci_high")) or _outside(
            a.get("drop"), b.get("ci_low"), b.get("ci_high"))
        if moved:
            changes.append(Change(
                "drop", spec, item,
                f"drop {measured_text(a, 'drop')} -> {measured_text(b, 'drop')} (reference "
                f"95% CI {_interval(a)}, candidate {_interval(b)})", a, b))
        if a.get("matched_units") is not None and b.get("matched_units") is not None and \
                matched_or_none(a) != matched_or_none(b):
            changes.append(Change("identity", spec, item,
                                  f"recorded unit matched {units_text(a)} -> "
                                  f"{units_text(b)}", a, b))
        elif a.get("deciding_units") is not None and b.get("deciding_units") is not None \
                and a.get("deciding_units") != b.get("deciding_units"):
            changes.append(Change("identity", spec, item,
                                  f"{units_text(a)} -> {units_text(b).replace('deciding ', '')}",
                                  a, b))
    changes.sort(key=lambda c: (KINDS.index(c.kind), c.spec, c.id))
    return changes


def report_problem(doc: Any) -> str | None:
    """Why ``doc`` is not a JSON report :func:`compare_reports` can read (None if it is).

    >>> report_problem({"items": [{"id": "a", "drop": "much"}]})
    "item 0 ('a'): drop is not a number"
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        return "not a pytest-unitablate JSON report (no items list)"
    for i, r in enumerate(doc["items"]):
        if not isinstance(r, dict) or "id" not in r:
            return f"item {i} is not a record with an id"
        for field in ("baseline", "drop", "ci_low", "ci_high"):
            value = r.get(field)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                return f"item {i} ({r['id']!r}): {field} is not a number"
    return None


def comparison_text(changes: Sequence[Change], reference: str, candidate: str) -> str:
    """The terminal listing: one line per change, grouped by kind, then a summary line."""
    lines = [f"unitablate compare: {reference} -> {candidate}"]
    for kind in KINDS:
        group = [c for c in changes if c.kind == kind]
        if group:
            lines.append(f"{kind} ({len(group)}):")
            lines += [f"  {c.spec}::{c.id}: {c.text}" for c in group]
    counts = ", ".join(f"{sum(c.kind == k for c in changes)} {k}" for k in KINDS
                       if any(c.kind == k for c in changes))
    lines.append(f"unitablate compare: {len(changes)} change(s)"
                 + (f": {counts}" if counts else ": the runs agree"))
    return "\n".join(lines)


def comparison_page(changes: Sequence[Change], reference: str, candidate: str,
                    ref_env: Mapping[str, Any], new_env: Mapping[str, Any]) -> str:
    """The same as a self-contained page: the two runs' facts and a table per kind."""
    title = "pytest-unitablate: what changed"
    body = [f"<h1>{e(title)}</h1>",
            f'<p class="summary">{len(changes)} change(s) from <code>{e(reference)}</code> to '
            f"<code>{e(candidate)}</code></p>"]
    keys = ("pytest_unitablate_version", "torch_version", "device", "dtype")
    facts = [(f"{k} (reference / candidate)", f"{ref_env.get(k)} / {new_env.get(k)}")
             for k in keys]
    body += ["<h2>Runs</h2>", facts_list(facts)]
    if not changes:
        body.append("<p>The runs agree: no outcome, drop or identity changed.</p>")
    for kind in KINDS:
        group = [c for c in changes if c.kind == kind]
        if not group:
            continue
        rows = []
        for c in group:
            a, b = c.reference or {}, c.candidate or {}
            rows.append(
                f"<tr><td>{e(c.id)}<br><small>{e(c.spec)}</small></td>"
                f"<td>{badge(a.get('outcome')) if a else ''}</td>"
                f"<td>{badge(b.get('outcome')) if b else ''}</td>"
                f'<td class="num">{e(measured_text(a, "drop"))}</td>'
                f'<td class="num">{e(measured_text(b, "drop"))}</td>'
                f"<td>{e(units_text(a))}</td><td>{e(units_text(b))}</td>"
                f'<td class="reason">{e(c.text)}</td></tr>')
        head = "".join(f"<th>{h}</th>" for h in (
            "item", "reference", "candidate", "reference drop", "candidate drop",
            "reference units", "candidate units", "change"))
        body += [f"<h2>{e(kind)} ({len(group)})</h2>",
                 f'<table class="items"><tr>{head}</tr>{"".join(rows)}</table>']
    return document(title, "".join(body))


__all__ = ["KINDS", "Change", "compare_reports", "comparison_page", "comparison_text",
           "report_problem"]
