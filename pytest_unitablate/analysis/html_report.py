"""A self-contained HTML report: unit x class drop heatmap, selectivity vs drop scatter plots,
and the checks' outcomes (no external files, scripts or URLs; inline SVG only).

    python -m pytest_unitablate.analysis.html_report --report unitablate.json --out report.html \\
        [--drops drops.csv] [--attributes attributes.csv]

``--report`` is the plugin's ``--unitablate-report`` JSON; ``--drops`` a ``scan().frame``
CSV; ``--attributes`` a ``unit_attributes()`` CSV. Any part may be missing.

Example::

    write_html_report("report.html", drops=scan(model, data, "layer3").frame,
                      attributes=unit_attributes(model, data, "layer3"), checks=records)
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

OUTCOME_COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "error": "#6a1b9a",
                   "skipped": "#757575", "xfailed": "#ef6c00", "xpassed": "#ef6c00"}


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _colour(value: float, vmax: float) -> str:
    """White (no drop) to red (drop == vmax); blue for negative drops."""
    if not math.isfinite(value):
        return "#eeeeee"
    t = max(-1.0, min(1.0, value / vmax if vmax > 0 else 0.0))
    if t >= 0:
        g = int(255 * (1 - t))
        return f"rgb(255,{g},{g})"
    b = int(255 * (1 + t))
    return f"rgb({b},{b},255)"


def heatmap_svg(drops: pd.DataFrame, max_units: int = 64) -> str:
    """Units (rows, sorted by their largest class drop) x classes (columns)."""
    per_class = drops[drops.target != "overall"]
    if per_class.empty:
        return "<p>No per-class drops.</p>"
    table = per_class.pivot_table(index="unit", columns="target", values="drop")
    order = table.max(axis=1).sort_values(ascending=False).index[:max_units]
    table = table.loc[order]
    cell, left, top = 22, 60, 30
    vmax = max(float(table.max().max()), 1e-9)
    width = left + cell * len(table.columns) + 120
    height = top + cell * len(table.index) + 20
    parts = [f'<svg width="{width}" height="{height}" '
             f'class="heatmap" role="img" aria-label="unit by class drop heatmap">']
    for j, col in enumerate(table.columns):
        parts.append(f'<text x="{left + j * cell + cell / 2}" y="{top - 8}" font-size="11" '
                     f'text-anchor="middle">{_e(col)}</text>')
    for i, unit in enumerate(table.index):
        y = top + i * cell
        parts.append(f'<text x="{left - 6}" y="{y + cell * 0.7}" font-size="11" '
                     f'text-anchor="end">{_e(unit)}</text>')
        for j, col in enumerate(table.columns):
            v = float(table.loc[unit, col])
            parts.append(f'<rect x="{left + j * cell}" y="{y}" width="{cell - 1}" '
                         f'height="{cell - 1}" fill="{_colour(v, vmax)}"><title>unit '
                         f'{_e(unit)}, class {_e(col)}: drop {v * 100:.1f} pp</title></rect>')
    lx = left + cell * len(table.columns) + 20
    for k in range(11):
        v = vmax * (1 - k / 10)
        parts.append(f'<rect x="{lx}" y="{top + k * 14}" width="16" height="14" '
                     f'fill="{_colour(v, vmax)}"/>')
    parts.append(f'<text x="{lx + 20}" y="{top + 10}" font-size="11">{vmax * 100:.0f} pp'
                 f'</text><text x="{lx + 20}" y="{top + 150}" font-size="11">0 pp</text>')
    parts.append("</svg>")
    return "".join(parts)


def scatter_svg(xs: Sequence[float], ys: Sequence[float], xlabel: str, ylabel: str,
                labels: Sequence[str] | None = None) -> str:
    """A scatter plot with axes, ticks and labels."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)
           if math.isfinite(float(x)) and math.isfinite(float(y))]
    w, h, m = 420, 300, 50
    if not pts:
        return "<p>No data for this plot.</p>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(0.0, min(p[1] for p in pts)), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def sx(x: float) -> float:
        return m + (x - x0) / (x1 - x0) * (w - 2 * m)

    def sy(y: float) -> float:
        return h - m - (y - y0) / (y1 - y0) * (h - 2 * m)

    parts = [f'<svg width="{w}" height="{h}" '
             f'class="scatter" role="img" aria-label="{_e(ylabel)} against {_e(xlabel)}">',
             f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>',
             f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>']
    for k in range(5):
        xv = x0 + (x1 - x0) * k / 4
        yv = y0 + (y1 - y0) * k / 4
        parts.append(f'<text x="{sx(xv)}" y="{h - m + 15}" font-size="10" '
                     f'text-anchor="middle">{xv:.2g}</text>')
        parts.append(f'<text x="{m - 5}" y="{sy(yv) + 3}" font-size="10" '
                     f'text-anchor="end">{yv * 100:.0f}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 10}" font-size="12" text-anchor="middle">'
                 f'{_e(xlabel)}</text>')
    parts.append(f'<text x="14" y="{h / 2}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 14 {h / 2})">{_e(ylabel)} (pp)</text>')
    for i, (x, y) in enumerate(pts):
        tip = f"{labels[i]}: " if labels else ""
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="#1565c0" '
                     f'fill-opacity="0.7"><title>{_e(tip)}{x:.3g}, {y * 100:.1f} pp</title>'
                     f'</circle>')
    parts.append("</svg>")
    return "".join(parts)


def checks_table(records: Sequence[dict[str, Any]]) -> str:
    """The plugin's JSON-report records as an HTML table, coloured by outcome."""
    if not records:
        return "<p>No checks.</p>"
    cols = ["id", "spec", "line", "target", "n", "baseline", "ablated", "drop", "ci_low",
            "ci_high", "constraint", "threshold", "outcome"]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    rows = []
    for r in records:
        cells = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, float) and c not in ("line", "n"):
                v = f"{v * 100:.1f}"
            style = (f' style="color:{OUTCOME_COLOURS.get(str(v), "black")};font-weight:bold"'
                     if c == "outcome" else "")
            cells.append(f"<td{style}>{_e('' if v is None else v)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="checks"><tr>{head}</tr>{"".join(rows)}</table>'


def write_html_report(path: str | Path, *, drops: pd.DataFrame | None = None,
                      attributes: pd.DataFrame | None = None,
                      checks: Sequence[dict[str, Any]] | None = None,
                      title: str = "pytest-unitablate report") -> None:
    """Write the report to ``path`` (one self-contained HTML file)."""
    sections = [f"<h1>{_e(title)}</h1>"]
    if checks is not None:
        counts: dict[str, int] = {}
        for r in checks:
            counts[str(r.get("outcome"))] = counts.get(str(r.get("outcome")), 0) + 1
        summary = ", ".join(f"{n} {_e(k)}" for k, n in sorted(counts.items()))
        sections.append(f"<h2>Checks</h2><p>{summary}</p>{checks_table(checks)}")
    if drops is not None:
        sections.append("<h2>Class drop per unit (pp)</h2>" + heatmap_svg(drops))
        overall = drops[drops.target == "overall"].set_index("unit")["drop"]
        worst = drops[drops.target != "overall"].groupby("unit")["drop"].max()
        units = [str(u) for u in overall.index]
        sections.append("<h2>Overall drop against largest class drop</h2>" + scatter_svg(
            list(overall.values), list(worst.reindex(overall.index).values),
            "overall drop (fraction)", "largest class drop", [f"unit {u}" for u in units]))
        if attributes is not None and "selectivity" in attributes:
            attrs = attributes.set_index("unit")
            sections.append("<h2>Class selectivity against largest class drop</h2>" +
                            scatter_svg(list(attrs["selectivity"].values),
                                        list(worst.reindex(attrs.index).values),
                                        "class selectivity", "largest class drop",
                                        [f"unit {u}" for u in attrs.index]))
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}")
    doc = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
           f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n")
    from pytest_unitablate.atomic import atomic_write

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, doc)


def main(argv: Sequence[str] | None = None) -> int:
    from pytest_unitablate.errors import optional_import

    pd = optional_import("pandas", "analysis", "the HTML report's command line")

    parser = argparse.ArgumentParser(prog="python -m pytest_unitablate.analysis.html_report")
    parser.add_argument("--report", type=Path, help="the plugin's JSON report")
    parser.add_argument("--drops", type=Path, help="CSV of scan().frame")
    parser.add_argument("--attributes", type=Path, help="CSV of unit_attributes()")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    checks = json.loads(args.report.read_text())["items"] if args.report else None
    drops = pd.read_csv(args.drops) if args.drops else None
    if drops is not None:
        drops["target"] = drops["target"].map(lambda t: t if t == "overall" else int(t))
    attrs = pd.read_csv(args.attributes) if args.attributes else None
    write_html_report(args.out, drops=drops, attributes=attrs, checks=checks)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
