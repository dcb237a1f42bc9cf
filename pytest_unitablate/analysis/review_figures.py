"""The review page's figures, drawn from a run's records with matplotlib (the ``analysis``
extra): the unit x class heatmap and overall drop against class drop.

Every item records the accuracy drop of every class and overall under its ablation
(``class_drops``, ``overall_drop``; a layer-wide check's are its deciding unit's). One
heatmap row per distinct ablation (spec, layer, units, ablation kind), one column per
class (named as the spec names them), colour the class drop in pp; and one point per
class item, its overall drop against its class's drop, in pp on equal axes with the y =
x line (the paper's first finding: points far above the line are units that barely move
overall accuracy but wreck a class). Pure functions of the records, so the same records
give the same bytes.

Example::

    figures = review_figures(records)       # [(title, svg), ...]; [] without the extra
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_unitablate.errors import MissingExtraError


def _label(r: Mapping[str, Any], with_spec: bool) -> str:
    """``layer3.0 u0``, ``layer3.0 u0+3``, ``conv5 h2``, ``conv5 any_unit:7``, then the
    ablation unless it is zero (``conv5 u5 mean``), after the spec's name when the page
    holds several specs (``alexnet: conv5 u5``)."""
    h = "h" if r.get("unit") == "head" else "u"
    units = r.get("matched_units") or r.get("units")
    if units:
        text = f"{r.get('layer')} {h}{'+'.join(map(str, units))}"
    else:
        deciding = r.get("deciding_units") or []
        text = f"{r.get('layer')} {r.get('mode')}:{'+'.join(map(str, deciding))}"
    if r.get("ablation") not in (None, "zero"):
        text += f" {r.get('ablation')}"
    if with_spec:
        stem = str(r.get("spec") or "").replace("\\", "/").rsplit("/", 1)[-1]
        text = f"{stem.rsplit('.', 1)[0]}: {text}"
    return text


def class_names(records: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Class index -> the name the spec gives it (its ``classes:``, else the class
    targets seen)."""
    names: dict[int, str] = {}
    for r in records:
        for k, name in enumerate(r.get("class_names") or []):
            names.setdefault(k, str(name))
    for r in records:
        if r.get("class_index") is not None and r.get("target") is not None:
            names.setdefault(int(r["class_index"]), str(r["target"]))
    return names


def review_figures(records: Sequence[Mapping[str, Any]], max_rows: int = 48
                   ) -> list[tuple[str, str]]:
    """``[(title, svg)]`` for the review page; ``[]`` when no item has class drops or
    matplotlib and pandas are not installed (the page then says so)."""
    rows = [r for r in records if r.get("class_drops")]
    if not rows:
        return []
    try:
        from pytest_unitablate.errors import optional_import

        pd = optional_import("pandas", "analysis", "the review page's plots")
        from pytest_unitablate.analysis.html_report import heatmap_svg, scatter_svg

        names = class_names(records)
        with_spec = len({str(r.get("spec")) for r in rows}) > 1
        seen: dict[str, list[float | None]] = {}
        for r in sorted(rows, key=lambda r: (str(r.get("spec")), int(r.get("line") or 0))):
            # one row per ablation: a unit under zero and under mean ablation are two
            seen.setdefault(_label(r, with_spec), list(r["class_drops"]))
        table = [{"unit": label, "target": k, "drop": d}
                 for label, drops in seen.items() for k, d in enumerate(drops)
                 if d is not None]
        heat = heatmap_svg(pd.DataFrame(table, columns=["unit", "target", "drop"]),
                           max_units=max_rows, class_names=names)
        points = [r for r in rows if r.get("class_index") is not None
                  and r.get("overall_drop") is not None]
        xs = [float(r["overall_drop"]) * 100 for r in points]
        ys = [float(r["class_drops"][int(r["class_index"])] or 0.0) * 100 for r in points]
        scatter = scatter_svg(xs, ys, "overall drop (pp)", "drop of the item's class (pp)",
                              equal=True)
    except (MissingExtraError, ImportError):
        return []
    return [("Unit x class damage", heat),
            ("Overall drop against the class's drop", scatter)]


__all__ = ["class_names", "review_figures"]
