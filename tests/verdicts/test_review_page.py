"""The review page (--unitablate-html): run facts, failures first with their reason,
units on every number."""

from __future__ import annotations

import re

from pytest_unitablate.verdicts.review_page import review_page, sort_for_review

RECORDS = [
    {"id": "a-u1-one-min_drop", "spec": "s.yaml", "line": 9, "layer": "a", "units": [1],
     "target": "one", "outcome": "passed", "baseline": 1.0, "ablated": 0.2, "drop": 0.8,
     "ci_low": 0.6, "ci_high": 0.9, "constraint": "min_drop", "threshold": 0.5,
     "weights_sha256": "abc123", "data_sha256": "def456", "model_ref": "my_model",
     "data_ref": "my_data"},
    {"id": "a-u15-six-min_drop", "spec": "s.yaml", "line": 20, "layer": "a", "units": [15],
     "matched_units": [10], "similarity": [0.73], "min_similarity": 0.75, "target": "six",
     "outcome": "failed", "constraint": "min_drop", "threshold": 0.4,
     "reason": "a-u15-six-min_drop: no unit of a matches the recorded unit 15"},
    {"id": "a-any-two-min_drop", "spec": "s.yaml", "line": 30, "layer": "a",
     "mode": "any_unit", "deciding_units": [7], "target": "two", "outcome": "failed",
     "baseline": 0.9, "ablated": 0.8, "drop": 0.1, "ci_low": 0.0, "ci_high": 0.2,
     "constraint": "min_relative_drop", "threshold": 0.5,
     "reason": "a-any two: relative drop 11.1%, needs >= 50.0%"},
]


def test_failures_come_first() -> None:
    assert [r["outcome"] for r in sort_for_review(RECORDS)] == ["failed", "failed", "passed"]
    page = review_page(RECORDS, {"torch_version": "2.14.1", "commit": "0123abc"})
    first_row = page.index("<tr><td><span")
    assert page[first_row:].index("failed") < page[first_row:].index("passed")
    assert "Failures (2)" in page


def test_every_row_says_why_and_every_number_has_its_unit() -> None:
    page = review_page(RECORDS, {})
    assert "no unit of a matches the recorded unit 15" in page  # identity: not a blank row
    assert "15-&gt;none (best 0.73)" in page
    assert "any_unit; deciding unit 7" in page
    assert "relative drop &gt;= 50.0%" in page and "drop &gt;= 40.0 pp" in page
    assert "[60.0, 90.0] pp" in page and "80.0 pp" in page and "20.0%" in page
    numbers = re.findall(r'<td class="num">([^<]*)</td>', page)
    assert numbers and all(n == "" or n.endswith(("%", " pp")) for n in numbers)


def test_the_run_facts_name_model_weights_data_torch_and_commit() -> None:
    page = review_page(RECORDS, {"torch_version": "2.14.1", "device": "cpu",
                                 "commit": "0123abc"})
    for text in ("2.14.1", "cpu", "0123abc", "my_model weights sha256 abc123",
                 "my_data sha256 def456"):
        assert text in page
    assert "<script" not in page


def test_a_long_unit_group_is_shortened() -> None:
    from pytest_unitablate.verdicts.review_page import units_text

    assert units_text({"units": list(range(26))}) == "26 units: 0+1+2+3+...+25"


def test_a_calibrated_threshold_says_what_it_rests_on() -> None:
    calibrated = {**RECORDS[2], "constraint": "min_logprob_drop", "threshold": 0.2,
                  "metric": "logprob", "calibration_models": 3, "calibration_low": 0.5,
                  "calibration_high": 1.25}
    unguardable = {**RECORDS[0], "unguardable": "s.yaml:9: a-u1-one-min_drop: unguardable"}
    page = review_page([calibrated, unguardable], {})
    assert ("log-prob drop &gt;= 0.200 nats (calibrated over 3 reference models: "
            "0.500-1.250 nats)") in page
    assert "(unguardable over the reference models: not recorded)" in page
