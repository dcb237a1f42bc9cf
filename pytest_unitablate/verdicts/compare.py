"""What changed between two runs of the same specs (torch-free):
``python -m pytest_unitablate compare REFERENCE.json CANDIDATE.json [--html out.html]``.

Both files are JSON reports (``--unitablate-report``, ``check --report``). Items are paired
by spec and id. A change is one of, in the order they are listed:

* **outcome**: the item passed in one run and failed (or errored, was skipped, ...) in the
  other; the candidate's reason follows (a forgotten class says so);
* **baseline**: a target's accuracy without any ablation moved beyond chance (once per spec
  and target: the model itself changed): the candidate's baseline lies outside the
  reference's 95% Wilson interval, or the reverse. Smaller moves are listed only with
  ``show_all`` (a mean log-probability, whose interval the report does not hold, is
  always listed);
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

from collections.abc import Callable, Mapping, Sequence
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
from pytest_unitablate.verdicts.stats import wilson

#: The kinds of change, in the order they are listed: what flipped first.
KINDS = ("outcome", "baseline", "drop", "identity", "added", "removed")


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


def _baseline_moved(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool | None:
    """Whether a target's baseline accuracy moved beyond chance between two records
    (each outside the other's 95% Wilson interval of its ``n``); ``None`` when it cannot
    be told (a log-probability, no ``n``)."""
    if a.get("metric") == "logprob" or not a.get("n") or not b.get("n"):
        return None
    x, y, n_a, n_b = float(a["baseline"]), float(b["baseline"]), int(a["n"]), int(b["n"])
    return _outside(y, *wilson(round(x * n_a), n_a)) or _outside(x, *wilson(round(y * n_b),
                                                                           n_b))


def compare_reports(reference: Mapping[str, Any], candidate: Mapping[str, Any],
                    show_all: bool = False) -> list[Change]:
    """Every change from ``reference`` to ``candidate`` (two JSON report documents):
    outcome flips first; baseline moves that chance explains are left out unless
    ``show_all``."""
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
        if abs(float(a["baseline"]) - float(b["baseline"])) > 1e-12 and (
                show_all or _baseline_moved(a, b) is not False):
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
            failing = b if b.get("outcome") in ("failed", "error") else None
            why = f": {failing['reason']}" if failing is not None and failing.get("reason") \
                else ""
            changes.append(Change("outcome", spec, item,
                                  f"{a.get('outcome')} -> {b.get('outcome')}{why}{rests}",
                                  a, b))
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


def hidden_text(hidden: int) -> str:
    """What a comparison left out, and how to see it (empty when nothing was).

    >>> hidden_text(2)
    '2 baseline move(s) inside the 95% interval (chance explains them) not listed; --all'
    """
    return (f"{hidden} baseline move(s) inside the 95% interval (chance explains them) not "
            f"listed; --all") if hidden else ""


def comparison_text(changes: Sequence[Change], reference: str, candidate: str,
                    hidden: int = 0) -> str:
    """The terminal listing: one line per change, grouped by kind, then a summary line
    (and, when ``hidden`` baseline moves were left out, a line saying so)."""
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
    if hidden:
        lines.append(f"unitablate compare: {hidden_text(hidden)}")
    return "\n".join(lines)


def comparison_page(changes: Sequence[Change], reference: str, candidate: str,
                    ref_env: Mapping[str, Any], new_env: Mapping[str, Any],
                    hidden: int = 0) -> str:
    """The same as a self-contained page: the two runs' facts and a table per kind."""
    title = "pytest-unitablate: what changed"
    left_out = f" ({e(hidden_text(hidden))})" if hidden else ""
    body = [f"<h1>{e(title)}</h1>",
            f'<p class="summary">{len(changes)} change(s) from <code>{e(reference)}</code> to '
            f"<code>{e(candidate)}</code>{left_out}</p>"]
    keys = ("pytest_unitablate_version", "torch_version", "device", "dtype")
    facts = [(f"{k} (reference / candidate)", f"{ref_env.get(k)} / {new_env.get(k)}")
             for k in keys]
    facts += tested_facts(ref_env, new_env)
    body += ["<h2>Runs</h2>", facts_list(facts)]
    if not changes:
        body.append("<p>The runs agree: no outcome, drop or identity changed.</p>")
    for kind in KINDS:
        group = [c for c in changes if c.kind == kind]
        if not group:
            continue
        heads, cells = _COLUMNS[kind]
        rows = [f"<tr><td>{e(c.id)}<br><small>{e(c.spec)}</small></td>"
                + "".join(cell(c.reference or {}, c.candidate or {}) for cell in cells)
                + f'<td class="reason">{e(c.text)}</td></tr>' for c in group]
        head = "".join(f"<th>{h}</th>" for h in (heads[0], *heads[1:], "change"))
        body += [f"<h2>{e(kind)} ({len(group)})</h2>",
                 f'<table class="items"><tr>{head}</tr>{"".join(rows)}</table>']
    return document(title, "".join(body))


def tested_facts(ref_env: Mapping[str, Any], new_env: Mapping[str, Any]
                 ) -> list[tuple[str, str]]:
    """Per spec, the weights and data each run tested (the reports' ``tested`` entries)."""
    def by_spec(env: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        return {PurePath(str(t.get("spec"))).name: t for t in env.get("tested") or ()
                if isinstance(t, dict)}

    def weights(t: Mapping[str, Any] | None) -> str:
        if not t or not t.get("weights_sha256"):
            return "?"
        return f"{t['weights_sha256']}" + (f" ({t['checkpoint']})" if t.get("checkpoint")
                                           else "")

    a, b = by_spec(ref_env), by_spec(new_env)
    facts = []
    for spec in sorted(set(a) | set(b)):
        facts.append((f"{spec}: weights sha256 (reference / candidate)",
                      f"{weights(a.get(spec))} / {weights(b.get(spec))}"))
        facts.append((f"{spec}: data sha256 (reference / candidate)",
                      f"{(a.get(spec) or {}).get('data_sha256') or '?'} / "
                      f"{(b.get(spec) or {}).get('data_sha256') or '?'}"))
    return facts


def _cell(text: str, num: bool = False) -> str:
    return f'<td class="num">{e(text)}</td>' if num else f"<td>{e(text)}</td>"


_Cell = Callable[[Mapping[str, Any], Mapping[str, Any]], str]

#: The columns of each kind's table (after the item): only what that change is about.
_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[_Cell, ...]]] = {
    "outcome": (("item", "reference", "candidate", "reference drop", "candidate drop"), (
        lambda a, b: f"<td>{badge(a.get('outcome'))}</td>",
        lambda a, b: f"<td>{badge(b.get('outcome'))}</td>",
        lambda a, b: _cell(measured_text(a, "drop"), True),
        lambda a, b: _cell(measured_text(b, "drop"), True))),
    "baseline": (("target", "reference baseline", "candidate baseline", "n"), (
        lambda a, b: _cell(measured_text(a, "baseline"), True),
        lambda a, b: _cell(measured_text(b, "baseline"), True),
        lambda a, b: _cell(f"{a.get('n') or '?'} / {b.get('n') or '?'}", True))),
    "drop": (("item", "reference drop", "candidate drop"), (
        lambda a, b: _cell(f"{measured_text(a, 'drop')} {interval_text(a)}", True),
        lambda a, b: _cell(f"{measured_text(b, 'drop')} {interval_text(b)}", True))),
    "identity": (("item", "reference units", "candidate units"), (
        lambda a, b: _cell(units_text(a)), lambda a, b: _cell(units_text(b)))),
    "added": (("item", "candidate"), (lambda a, b: f"<td>{badge(b.get('outcome'))}</td>",)),
    "removed": (("item", "reference"), (lambda a, b: f"<td>{badge(a.get('outcome'))}</td>",)),
}


__all__ = ["KINDS", "Change", "compare_reports", "comparison_page", "comparison_text",
           "hidden_text", "report_problem", "tested_facts"]
