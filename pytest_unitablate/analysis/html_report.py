"""The analysis page: the unit x class drop heatmap, overall-vs-class drop and
selectivity-vs-drop scatter plots (drawn by matplotlib as inline SVG), and the checks'
outcomes, in one self-contained HTML file (no scripts, no external files or URLs).

    python -m pytest_unitablate.analysis.html_report --report unitablate.json \\
        --drops drops.csv --attributes attributes.csv --out report.html

``--report`` is a JSON report (``--unitablate-report``), which also names the classes;
``--drops`` a CSV of a scan's tidy frame, written with
``scan(model, data, "layer3").frame.to_csv("drops.csv", index=False)``; ``--attributes``
a CSV of ``unit_attributes(model, data, "layer3")`` written the same way. Any part may be
missing. Needs the ``analysis`` extra (pandas, matplotlib).

Example::

    write_html_report("report.html", drops=scan(model, data, "layer3").frame,
                      attributes=unit_attributes(model, data, "layer3"), checks=records)
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_unitablate.verdicts.review_page import e

if TYPE_CHECKING:
    import pandas as pd


def _figure_svg(fig: Any) -> str:
    """A matplotlib figure as inline SVG: text kept as text, ids salted so the same data
    give the same bytes, and no XML prolog, comments or namespace URLs (HTML5 parses
    inline SVG without them)."""
    import io
    import re

    from pytest_unitablate.errors import optional_import

    mpl = optional_import("matplotlib", "analysis", "the analysis page's plots")
    buf = io.StringIO()
    with mpl.rc_context({"svg.hashsalt": "pytest-unitablate", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight",
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    return text


def _plotting() -> Any:
    """matplotlib's Figure class (lazy: the analysis extra); the SVG settings apply only
    while a page is drawn (rc_context), never to the user's own plots."""
    from pytest_unitablate.errors import optional_import

    return optional_import("matplotlib.figure", "analysis", "the analysis page's plots").Figure


def heatmap_svg(drops: pd.DataFrame, max_units: int = 64,
                class_names: dict[int, str] | None = None) -> str:
    """Units (rows, sorted by their largest class drop) x classes (columns, named), the
    colour the class drop in pp."""
    per_class = drops[drops.target != "overall"]
    if per_class.empty:
        return "<p>No per-class drops.</p>"
    table = per_class.pivot_table(index="unit", columns="target", values="drop")
    order = table.max(axis=1).sort_values(ascending=False).index[:max_units]
    table = table.loc[order] * 100
    names = [str((class_names or {}).get(int(c), c)) if str(c).lstrip("-").isdigit() else str(c)
             for c in table.columns]
    figure = _plotting()
    fig = figure(figsize=(1.2 + 0.45 * len(names), 1.0 + 0.22 * len(table.index)))
    ax = fig.add_subplot()
    vmax = max(float(abs(table.values).max()), 1e-9)
    image = ax.imshow(table.values, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(table.index)), [str(u) for u in table.index])
    ax.set_xlabel("class")
    ax.set_ylabel("unit (largest class drop first)")
    fig.colorbar(image, ax=ax, label="class drop when the unit is ablated (pp)")
    return _figure_svg(fig)


def scatter_svg(xs: Sequence[float], ys: Sequence[float], xlabel: str, ylabel: str,
                labels: Sequence[str] | None = None, *, equal: bool = False) -> str:
    """A scatter plot; ``equal``: both axes in the same unit and range, with y = x."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)
           if math.isfinite(float(x)) and math.isfinite(float(y))]
    if not pts:
        return "<p>No data for this plot.</p>"
    figure = _plotting()
    fig = figure(figsize=(4.2, 4.0 if equal else 3.2))
    ax = fig.add_subplot()
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, alpha=0.75, color="#1565c0")
    if equal:
        low = min(0.0, *(min(p) for p in pts))
        high = max(1.0, *(max(p) for p in pts)) * 1.05
        ax.plot([low, high], [low, high], linestyle="--", color="#888", linewidth=1,
                label="y = x")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_aspect("equal")
        ax.legend(loc="lower right")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return _figure_svg(fig)


def write_html_report(path: str | Path, *, drops: pd.DataFrame | None = None,
                      attributes: pd.DataFrame | None = None,
                      checks: Sequence[dict[str, Any]] | None = None,
                      title: str = "pytest-unitablate report",
                      class_names: dict[int, str] | None = None) -> None:
    """Write the report to ``path`` (one self-contained HTML file). Class names come from
    ``class_names`` or, failing that, from the checks' ``class_index`` and ``target``."""
    names = dict(class_names or {})
    for r in checks or []:
        if r.get("class_index") is not None and r.get("target") is not None:
            names.setdefault(int(r["class_index"]), str(r["target"]))
    sections = [f"<h1>{e(title)}</h1>"]
    if checks is not None:
        counts: dict[str, int] = {}
        for r in checks:
            counts[str(r.get("outcome"))] = counts.get(str(r.get("outcome")), 0) + 1
        summary = ", ".join(f"{n} {e(k)}" for k, n in sorted(counts.items()))
        from pytest_unitablate.verdicts.review_page import items_table

        sections.append(f"<h2>Checks</h2><p>{summary}</p>{items_table(checks)}")
    if drops is not None:
        sections.append("<h2>Class drop per unit</h2>" + heatmap_svg(drops,
                                                                    class_names=names))
        overall = drops[drops.target == "overall"].set_index("unit")["drop"] * 100
        worst = drops[drops.target != "overall"].groupby("unit")["drop"].max() * 100
        units = [str(u) for u in overall.index]
        sections.append(
            "<h2>Overall drop against largest class drop</h2><p>Both in percentage points, "
            "on the same scale: a unit above the dashed line hurts one class more than the "
            "model as a whole (the paper's first finding).</p>" + scatter_svg(
                list(overall.values), list(worst.reindex(overall.index).values),
                "overall drop (pp)", "largest class drop (pp)",
                [f"unit {u}" for u in units], equal=True))
        if attributes is not None and "selectivity" in attributes:
            attrs = attributes.set_index("unit")
            sections.append("<h2>Class selectivity against largest class drop</h2>" +
                            scatter_svg(list(attrs["selectivity"].values),
                                        list(worst.reindex(attrs.index).values),
                                        "class selectivity", "largest class drop (pp)",
                                        [f"unit {u}" for u in attrs.index]))
    from pytest_unitablate.verdicts.review_page import document

    doc = document(title, "".join(sections))
    from pytest_unitablate.atomic import atomic_write

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, doc)


def main(argv: Sequence[str] | None = None) -> int:
    from pytest_unitablate.errors import optional_import

    pd = optional_import("pandas", "analysis", "the HTML report's command line")

    parser = argparse.ArgumentParser(prog="python -m pytest_unitablate.analysis.html_report")
    parser.add_argument("--report", type=Path, help="the plugin's JSON report")
    parser.add_argument("--drops", type=Path, help="CSV of scan(...).frame "
                        "(frame.to_csv('drops.csv', index=False))")
    parser.add_argument("--attributes", type=Path, help="CSV of unit_attributes(...)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names in index order (default: the "
                        "report's, else the indices)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    checks = json.loads(args.report.read_text())["items"] if args.report else None
    drops = pd.read_csv(args.drops) if args.drops else None
    if drops is not None:
        drops["target"] = drops["target"].map(lambda t: t if t == "overall" else int(t))
    attrs = pd.read_csv(args.attributes) if args.attributes else None
    names = dict(enumerate(args.classes.split(","))) if args.classes else None
    write_html_report(args.out, drops=drops, attributes=attrs, checks=checks,
                      class_names=names)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
