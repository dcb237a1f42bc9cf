"""The record helpers the terminal summary, the JSON report and the run file are made of,
called on hand-made records and checked against the exact text or document they give.

The plugin tests see these through a whole pytest run; here each rule (a unit, a plural,
which part of the legend a table needs, which record wins) is one line of a record away
from the answer it changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_unitablate.verdicts.records import (
    FIELDS,
    RUN_ABOUT,
    build_report,
    build_run,
    calibration_text,
    describe_required,
    engine_lines,
    engines,
    format_table,
    interval_text,
    matched_or_none,
    measured_text,
    pct,
    provenance_lines,
    run_path,
    sort_records,
    spec_lines,
    spec_problems_line,
    spec_problems_only,
    summary_line,
    table_legend,
    write_json,
)
from pytest_unitablate.verdicts.records import (
    tested as specs_tested,
)


@pytest.mark.parametrize(("constraint", "threshold", "text"), [
    (None, 0.4, ""),
    ("min_drop", None, "min_drop: not recorded"),
    ("min_drop", 0.4, "drop >= 40.0 pp"),
    ("max_drop", 0.05, "drop <= 5.0 pp"),
    ("min_relative_drop", 0.25, "relative drop >= 25.0%"),
    ("max_relative_drop", 0.1, "relative drop <= 10.0%"),
    ("min_accuracy", 0.8, "accuracy >= 80.0%"),
    ("max_accuracy", 0.125, "accuracy <= 12.5%"),
    ("min_logprob_drop", 0.5, "log-prob drop >= 0.500 nats"),
    ("max_logprob_drop", 1.25, "log-prob drop <= 1.250 nats"),
])
def test_what_a_constraint_requires_in_its_unit(constraint: str | None,
                                                threshold: float | None, text: str) -> None:
    assert describe_required(constraint, threshold) == text


def test_calibration_text_needs_models_and_both_ends() -> None:
    full = {"constraint": "min_drop", "calibration_models": 1,
            "calibration_low": 0.6, "calibration_high": 0.95}
    assert calibration_text(full) == "over 1 reference model: 60.0-95.0 pp"
    assert calibration_text({**full, "calibration_models": 4}) == \
        "over 4 reference models: 60.0-95.0 pp"
    for missing in ("calibration_models", "calibration_low", "calibration_high"):
        assert calibration_text({k: v for k, v in full.items() if k != missing}) == ""
    assert calibration_text({**full, "calibration_models": 0}) == ""
    assert calibration_text({**full, "calibration_low": 0.0}) == \
        "over 1 reference model: 0.0-95.0 pp"


def test_percentages_and_measurements_in_their_units() -> None:
    assert (pct(0.5), pct(0.5, " pp"), pct(None), pct(0)) == ("50.0%", "50.0 pp", "", "0.0%")
    r = {"baseline": 0.9, "ablated": 0.25, "drop": 0.65}
    assert [measured_text(r, f) for f in ("baseline", "ablated", "drop")] == \
        ["90.0%", "25.0%", "65.0 pp"]
    logprob = {**r, "metric": "logprob", "baseline": -0.12345}
    assert [measured_text(logprob, f) for f in ("baseline", "drop")] == \
        ["-0.123 nats", "0.650 nats"]
    assert measured_text({}, "drop") == ""
    assert measured_text({"drop": 0.0}, "drop") == "0.0 pp"


def test_the_interval_in_the_unit_of_what_it_bounds() -> None:
    r = {"ci_low": 0.111, "ci_high": 0.402}
    assert interval_text(r) == "[11.1, 40.2] pp"
    assert interval_text({**r, "constraint": "min_accuracy"}) == "[11.1, 40.2]%"
    assert interval_text({**r, "constraint": "max_drop", "metric": "logprob"}) == \
        "[0.111, 0.402] nats"
    assert interval_text({"ci_low": 0.1}) == interval_text({"ci_high": 0.1}) == ""
    assert interval_text({"ci_low": 0.0, "ci_high": 0.0}) == "[0.0, 0.0] pp"


def test_matched_units_below_min_similarity_are_none() -> None:
    r = {"matched_units": [10, None, 3, 4], "similarity": [0.75, 0.9, 0.74999, 0.2],
         "min_similarity": 0.75}
    # the judge takes a best match at exactly min_similarity
    assert matched_or_none(r) == [10, None, None, None]
    assert matched_or_none({**r, "min_similarity": None}) == [10, None, 3, 4]
    assert matched_or_none({"matched_units": [10, 3], "min_similarity": 0.75}) == [10, 3]
    assert matched_or_none({"matched_units": [10, 3], "similarity": [0.9, None],
                            "min_similarity": 0.75}) == [10, 3]
    assert matched_or_none({}) == []


ROWS: list[dict[str, Any]] = [
    {"layer": "conv5", "units": [3, 7], "target": "seven", "baseline": 0.9,
     "ablated": 0.5, "drop": 0.4, "constraint": "min_drop", "threshold": 0.2,
     "outcome": "passed"},
    {"layer": "attn", "unit": "head", "units": [1, 2], "matched_units": [4, 5],
     "similarity": [0.9, 0.1], "min_similarity": 0.5, "target": "overall",
     "baseline": 0.8, "ablated": 0.8, "drop": 0.0, "constraint": "max_drop",
     "threshold": 0.05, "outcome": "failed"},
    {"layer": "fc", "mode": "any_unit", "deciding_units": [9, 2], "target": "two",
     "metric": "logprob", "baseline": -0.1, "ablated": -0.6, "drop": 0.5,
     "constraint": "min_logprob_drop", "threshold": 0.25, "outcome": "passed"},
    {"layer": "fc", "deciding_units": [1], "target": "two", "outcome": "error"},
    {"layer": "fc", "mode": "top_units", "target": "three", "constraint": "min_accuracy",
     "threshold": None, "outcome": "skipped"},
    {"target": "none"},
]


def test_the_table_shows_each_kind_of_units_cell() -> None:
    lines = format_table(ROWS).splitlines()
    header, rule, *rows = lines[:-1]
    widths = [len(part) for part in rule.split("  ")]
    assert header.split() == ["layer", "units", "target", "baseline", "ablated", "drop",
                              "required", "outcome"]
    cells = [_cells(row, widths) for row in rows]
    assert [c[1] for c in cells] == ["3+7", "h1->h4+h2->none", "any_unit:9+2", "1",
                                     "top_units", ""]
    assert cells[0] == ["conv5", "3+7", "seven", "90.0%", "50.0%", "40.0 pp",
                        "drop >= 20.0 pp", "passed"]
    assert cells[1][3:] == ["80.0%", "80.0%", "0.0 pp", "drop <= 5.0 pp", "failed"]
    assert cells[2][3:] == ["-0.100 nats", "-0.600 nats", "0.500 nats",
                            "log-prob drop >= 0.250 nats", "passed"]
    assert cells[4][6:] == ["min_accuracy: not recorded", "skipped"]
    assert cells[5] == ["", "", "none", "", "", "", "", ""]
    assert all(line == line.rstrip() for line in lines)
    assert lines[-1] == table_legend(ROWS)


def _cells(row: str, widths: list[int]) -> list[str]:
    out, at = [], 0
    for width in widths:
        out.append(row[at:at + width].strip())
        at += width + 2
    return out


def test_a_head_check_names_its_heads_h_and_a_layer_wide_one_its_mode() -> None:
    rows = [{"layer": "attn", "unit": "head", "mode": "every_unit", "deciding_units": [0, 3],
             "target": "x", "outcome": "failed"},
            {"layer": "attn", "unit": "head", "units": [2], "target": "x"}]
    cells = [line.split()[1] for line in format_table(rows).splitlines()[2:4]]
    assert cells == ["every_unit:h0+h3", "h2"]


@pytest.mark.parametrize(("records", "legend"), [
    ([{"units": [3]}], "units: the units ablated together"),
    ([{"units": [3]}, {"unit": "head", "units": [1]}],
     "units: the heads ablated together (h3: attention head 3)"),
    ([{"mode": "any_unit"}], "units: the units ablated together; <mode>:<units> names a "
     "layer-wide check (any_unit) and the unit(s) that decided its outcome, each ablated "
     "alone"),
    ([{"mode": "top_units"}], "units: the units ablated together; <mode>:<units> names a "
     "layer-wide check (top_units) and the unit(s) that decided its outcome, together"),
    ([{"mode": "top_units"}, {"mode": "every_unit"}, {"mode": "any_unit"}],
     "units: the units ablated together; <mode>:<units> names a layer-wide check "
     "(any_unit, every_unit, top_units) and the unit(s) that decided its outcome, any_unit "
     "and every_unit ablate each alone, top_units together"),
    ([{"mode": "every_unit", "constraint": "min_accuracy"}],
     "units: the units ablated together"),
    ([{"mode": "every_unit", "constraint": "min_drop"}],
     "units: the units ablated together; <mode>:<units> names a layer-wide check "
     "(every_unit) and the unit(s) that decided its outcome, each ablated alone"),
    ([{"units": [10], "matched_units": [3], "similarity": [0.9], "min_similarity": 0.5}],
     "units: the units ablated together; 10->3: identity: signature matched the recorded "
     "unit 10 to unit 3 of the model under test"),
    ([{"units": [10, 15], "matched_units": [3, 4], "similarity": [0.9, 0.2],
       "min_similarity": 0.5}],
     "units: the units ablated together; 10->3: identity: signature matched the recorded "
     "unit 10 to unit 3 of the model under test; 15->none: no unit is similar enough (the "
     "best candidate is not ablated)"),
])
def test_the_legend_explains_only_what_the_rows_use(records: list[dict[str, Any]],
                                                   legend: str) -> None:
    assert table_legend(records) == legend


def test_the_summary_line_counts_items_checks_and_failures() -> None:
    records = [
        {"outcome": "passed", "spec": "a.yaml", "check_index": 0},
        {"outcome": "failed", "spec": "a.yaml", "check_index": 0},
        {"outcome": "error", "spec": "a.yaml", "check_index": 1},
        {"outcome": "skipped", "spec": "b.yaml", "check_index": 0},
        {"outcome": "xfailed", "spec": "b.yaml", "check_index": 0},
        {"outcome": "xfailed", "spec": "b.yaml", "check_index": 0},
        {"outcome": "xpassed", "spec": "b.yaml", "check_index": 0},
    ]
    assert summary_line(records, Path("out/r.json")) == (
        "unitablate: 7 items of 3 checks, 2 failed, 1 skipped, 2 xfailed, 1 xpassed; "
        "report: out/r.json")
    assert summary_line(records[:1], None) == "unitablate: 1 item of 1 check, 0 failed"
    assert summary_line([], None) == "unitablate: 0 items of 0 checks, 0 failed"


def test_spec_problems_decide_exit_2_only_when_alone() -> None:
    spec = {"outcome": "error", "problem": "spec"}
    model = {"outcome": "error", "problem": "model"}
    assert spec_problems_only([spec, spec, {"outcome": "passed"}])
    assert not spec_problems_only([spec, model])
    assert not spec_problems_only([spec, {"outcome": "failed", "problem": "spec",
                                          "unguardable": "too weak"}])
    assert not spec_problems_only([spec, {"outcome": "passed", "unguardable": "too weak"}])
    assert not spec_problems_only([])
    assert spec_problems_line([spec, model, {"outcome": "failed"}, {"outcome": "passed"}]) \
        == ("unitablate: 1 of 3 failures are spec problems (problem: spec in the report): fix "
            "those spec lines; the others are the model under test")
    assert spec_problems_line([model, {"outcome": "passed", "problem": "spec"}]) == ""


def test_one_engine_line_per_swept_layer_the_first_record_deciding() -> None:
    records = [
        {"spec": "specs/a.yaml", "layer": "l1", "engine": "prefix", "engine_plan": "4 x 64",
         "engine_reason": "budget"},
        {"spec": "specs/a.yaml", "layer": "l1", "engine": "naive"},
        {"spec": "specs/a.yaml", "layer": "l2", "engine": "naive",
         "engine_reason": "not traceable"},
        {"spec": "specs/a.yaml", "layer": "l3", "engine": "suffix", "engine_plan": "1 x 8"},
        {"spec": "other/a.yaml", "layer": "l3", "engine": "collect"},
        {"spec": "specs/a.yaml", "layer": "l4"},
        {"spec": "specs/a.yaml", "engine": "naive"},
    ]
    assert engine_lines(records) == [
        "a.yaml l1: prefix, 4 x 64 (budget)",
        "a.yaml l2: naive (not traceable)",
        "a.yaml l3: suffix, 1 x 8",
        "a.yaml : naive",
    ]
    assert engines(records) == [
        {"spec": "other/a.yaml", "layer": "l3", "engine": "collect", "reason": None,
         "plan": None},
        {"spec": "specs/a.yaml", "layer": "l1", "engine": "prefix", "reason": "budget",
         "plan": "4 x 64"},
        {"spec": "specs/a.yaml", "layer": "l2", "engine": "naive", "reason": "not traceable",
         "plan": None},
        {"spec": "specs/a.yaml", "layer": "l3", "engine": "suffix", "reason": None,
         "plan": "1 x 8"},
        {"spec": "specs/a.yaml", "layer": None, "engine": "naive", "reason": None,
         "plan": None},
    ]


def test_records_sort_by_spec_then_line_as_a_number_then_id() -> None:
    records = [{"spec": "b", "line": 2, "id": "x"}, {"spec": "a", "line": 10, "id": "z"},
               {"spec": "a", "line": 9, "id": "y"}, {"spec": "a", "line": 9, "id": "a"},
               {"spec": "a", "id": "q"}]
    assert [(r["spec"], r.get("line"), r["id"]) for r in sort_records(records)] == [
        ("a", None, "q"), ("a", 9, "a"), ("a", 9, "y"), ("a", 10, "z"), ("b", 2, "x")]
    copies = sort_records(records)
    copies[0]["id"] = "changed"
    assert records[4]["id"] == "q"  # copies: the caller's records are not touched


def _spec_records() -> list[dict[str, Any]]:
    common = {"spec": "s.yaml", "model_ref": "net", "data_ref": "digits"}
    return [
        {**common, "line": 3, "id": "a", "layer": "conv5", "check_index": 0, "target": "t0",
         "provenance": ["torch: recorded 2.1, now 2.4"]},
        {**common, "line": 4, "id": "b", "layer": "conv5", "check_index": 0, "target": "t1",
         "weights_sha256": "ab12", "provenance": ["torch: recorded 2.1, now 2.4",
                                                  "device: recorded cuda, now cpu"]},
        {**common, "line": 5, "id": "c", "layer": "fc", "check_index": 1, "target": "t2",
         "weights_sha256": "ffff", "data_sha256": "cd34"},
        *({**common, "line": 6 + i, "id": f"d{i}", "layer": "fc", "check_index": 2,
           "target": f"t{3 + i}"} for i in range(4)),
        {"spec": "t.yaml", "model_ref": "other", "data_ref": "text", "line": 1, "id": "e",
         "layer": "h", "check_index": 0, "target": "overall", "checkpoint": "c.pt"},
    ]


def test_tested_keeps_each_specs_first_known_hash_and_every_difference_once() -> None:
    assert specs_tested(_spec_records()) == [
        {"spec": "s.yaml", "model": "net", "weights_sha256": "ab12", "checkpoint": None,
         "data": "digits", "data_sha256": "cd34",
         "differs_from_recorded": ["torch: recorded 2.1, now 2.4",
                                   "device: recorded cuda, now cpu"]},
        {"spec": "t.yaml", "model": "other", "weights_sha256": None, "checkpoint": "c.pt",
         "data": "text", "data_sha256": None, "differs_from_recorded": []},
    ]
    assert provenance_lines(_spec_records()) == [
        "s.yaml: thresholds were recorded in another environment (torch: recorded 2.1, now "
        "2.4; device: recorded cuda, now cpu); re-record if the differences are intended"]


def test_spec_lines_name_weights_layers_checks_and_at_most_six_targets() -> None:
    assert spec_lines(_spec_records()) == [
        "s.yaml: model net (weights sha256 ab12) on digits: 3 checks of conv5, fc (targets "
        "t0, t1, t2, t3, t4, t5, ... (7 in all))",
        "t.yaml: model other (c.pt) on text: 1 check of h (targets overall)",
    ]
    six = [r for r in _spec_records() if r["id"] != "d3"]
    assert spec_lines(six)[0].endswith("(targets t0, t1, t2, t3, t4, t5)")
    bare = [{"spec": "u.yaml", "model_ref": "m", "data_ref": "d", "layer": "x",
             "check_index": 0, "target": "y"}]
    assert spec_lines(bare) == ["u.yaml: model m on d: 1 check of x (targets y)"]
    both = [{**bare[0], "weights_sha256": "ab12", "checkpoint": "best.pt"}]
    assert spec_lines(both) == [
        "u.yaml: model m (weights sha256 ab12, best.pt) on d: 1 check of x (targets y)"]


def test_the_report_keeps_the_fields_in_order_and_the_run_file_the_rest() -> None:
    records = [{"id": "b", "spec": "s.yaml", "line": 2, "engine": "naive", "layer": "l",
                "torch_threads": 2, "extra": 1},
               {"id": "a", "spec": "s.yaml", "line": 1, "torch_threads": 1}]
    report = build_report(records, {"torch": "2.x"})
    assert list(report) == ["torch", "tested", "items"]
    assert [item["id"] for item in report["items"]] == ["a", "b"]
    assert all(list(item) == list(FIELDS) for item in report["items"])
    assert report["tested"] == specs_tested(records)
    assert build_run(records) == {
        "about": RUN_ABOUT, "torch_threads": [1, 2],
        "engines": [{"spec": "s.yaml", "layer": "l", "engine": "naive", "reason": None,
                     "plan": None}]}
    assert build_run([]) == {"about": RUN_ABOUT, "torch_threads": [], "engines": []}


def test_the_run_file_sits_beside_the_report(tmp_path: Path) -> None:
    assert run_path("out/r.json") == Path("out/r.run.json")
    assert run_path("out/report") == Path("out/report.run.json")
    assert run_path(Path("r.txt")) == Path("r.run.txt")
    target = tmp_path / "deep" / "er" / "r.json"
    write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text("utf-8") == '{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert json.loads(target.read_text("utf-8")) == {"b": 1, "a": [1, 2]}
