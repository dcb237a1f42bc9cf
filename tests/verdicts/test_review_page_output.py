"""The review page's exact output, fragment by fragment, against a golden file.

``test_review_page.py`` asks what a reviewer needs; this pins how every kind of record
reads (failed, error, xpassed, skipped, an unknown outcome; calibrated, forgotten,
recorded, noted and unguardable thresholds; heads, matched and lost units, long groups,
deciding units, a class's own accuracy) so that a change to any of it is seen in review.
After an intended change, regenerate the golden file and read its diff:
``UNITABLATE_REGOLD=1 pytest tests/verdicts/test_review_page_output.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pytest_unitablate.verdicts.review_page import (
    badge,
    e,
    items_table,
    reference_text,
    review_page,
    sort_for_review,
    units_text,
    write_review_page,
)

GOLDEN = Path(__file__).parent / "golden" / "review_page.txt"

RECORDS = [
    {"id": "ok", "spec": "b.yaml", "line": 3, "layer": "conv5", "units": [1, 2],
     "target": "two", "outcome": "passed", "baseline": 0.9, "ablated": 0.5, "drop": 0.4,
     "ci_low": 0.3, "ci_high": 0.5, "constraint": "min_drop", "threshold": 0.2,
     "model_ref": "net", "data_ref": "digits", "weights_sha256": "w1", "checkpoint": "c.pt",
     "data_sha256": "d1", "provenance": ["torch 2.13.0 when recorded"]},
    {"id": "cal", "spec": "a.yaml", "line": 12, "layer": "conv5", "units": [3],
     "target": "seven", "outcome": "failed", "baseline": 0.8, "ablated": 0.75,
     "drop": 0.05, "ci_low": 0.0, "ci_high": 0.1, "constraint": "min_drop",
     "threshold": 0.3, "calibration_models": 3, "calibration_low": 0.4,
     "calibration_high": 0.6, "reason": "drop 5.0 pp < 30.0 pp",
     "next_step": "look at unit 3", "model_ref": "net", "data_ref": "digits",
     "weights_sha256": "w2", "data_sha256": "d2"},
    {"id": "gone", "spec": "a.yaml", "line": 4, "layer": "fc", "unit": "head",
     "units": [15], "matched_units": [-1], "similarity": [0.42], "min_similarity": 0.75,
     "target": "four", "outcome": "failed", "baseline": 0.5, "forgotten": True,
     "reference_baseline": 0.87, "constraint": "min_drop", "threshold": 0.2,
     "reason": "class 'four' fell", "unguardable": True},
    {"id": "rec", "spec": "a.yaml", "line": 4, "layer": "fc", "units": [5],
     "matched_units": [6], "similarity": [0.91], "target": "one", "outcome": "error",
     "metric": "logprob", "recorded_drop": 0.25, "drop": 0.1, "baseline": -0.3,
     "reason": "boom", "next_step": "pytest --unitablate-record"},
    {"id": "note", "spec": "a.yaml", "line": 20, "layer": "blocks.0", "unit": "head",
     "mode": "any_unit", "deciding_units": [2, 5], "target": "six",
     "outcome": "xpassed", "reference_note": "measured 51.5 pp"},
    {"id": "own", "spec": "a.yaml", "line": 21, "layer": "blocks.0", "mode": "any_unit",
     "constraint": "min_accuracy", "threshold": 0.5, "target": "six", "outcome": "skipped"},
    {"id": "many", "spec": "a.yaml", "line": 22, "layer": "conv1",
     "units": list(range(10)), "target": "six", "outcome": "weird"},
]
ENV = {"pytest_unitablate_version": "0.4.0", "torch_version": "2.14.1", "device": "cpu",
       "dtype": None, "commit": "abc123", "chosen_by": {"DEMO_CHECKPOINT": "resnet"}}


def _fragments(page: str) -> list[str]:
    """The page split where a reader's eye moves: rows, facts, headings."""
    return [f for f in re.split(r"(?<=</tr>)|(?<=</dd>)|(?=<h2>)|(?=<p)", page.rstrip("\n")) if f]


def test_the_page_reads_as_the_golden_file() -> None:
    fragments = _fragments(review_page(RECORDS, ENV, figures=[]))
    if os.environ.get("UNITABLATE_REGOLD"):
        GOLDEN.write_text("\n".join(fragments) + "\n")
    expected = GOLDEN.read_text().splitlines()
    for i, (got, want) in enumerate(zip(fragments, expected, strict=False)):
        assert got == want, f"fragment {i} differs (UNITABLATE_REGOLD=1 to accept)"
    assert len(fragments) == len(expected)


def test_failures_sort_by_severity_then_spec_then_line_as_a_number_then_id() -> None:
    assert [r["id"] for r in sort_for_review(RECORDS)] == [
        "gone", "cal", "rec", "note", "own", "ok", "many"]
    assert [r["id"] for r in sort_for_review([{"id": "b"}, {"id": "a", "line": None}])] == [
        "a", "b"]


def test_figures_and_their_absence() -> None:
    with_figure = review_page(RECORDS[:1], ENV, figures=[("Damage <x>", "<svg></svg>")])
    assert '<h2>Damage &lt;x&gt;</h2><div class="figure"><svg></svg></div>' in with_figure
    assert "need matplotlib" not in with_figure
    without = review_page(RECORDS[:1], ENV)
    assert "need matplotlib" not in without and "figure" not in without
    assert "<h2>Failures" not in without and "1 items: 1 passed" in without
    assert review_page([], {}).count("<p>No items.</p>") == 1
    assert items_table([]) == "<p>No items.</p>"


def test_small_parts() -> None:
    assert e(None) == "" and e("<a \"b\" 'c'>") == "&lt;a &quot;b&quot; &#x27;c&#x27;&gt;"
    assert e(0) == "0"
    assert badge(None) == '<span class="badge" style="background:#444"></span>'
    assert units_text({"units": [1], "matched_units": [2]}) == "1->2"
    assert units_text({"units": [1], "matched_units": [None]}) == "1->none"
    assert units_text({"unit": "head", "deciding_units": [3]}) == "deciding head h3"
    assert units_text({"deciding_units": [3, 4], "mode": ""}) == "deciding units 3, 4"
    assert units_text({"units": list(range(8))}) == "0+1+2+3+4+5+6+7"
    assert units_text({"mode": "every_unit"}) == "every_unit"
    assert units_text({}) == ""
    assert reference_text({}) == ""
    assert reference_text({"forgotten": True, "reference_note": "x"}) == "when recorded: x"
    assert reference_text({"recorded_drop": 0.25}) == "recorded drop 25.0 pp"


def test_written_atomically_into_new_folders(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "review.html"
    write_review_page(path, iter(RECORDS), ENV)
    assert path.read_text() == review_page(RECORDS, ENV)
    assert [p.name for p in path.parent.iterdir()] == ["review.html"]
