"""compare: what changed between two JSON reports, in the terminal and as a page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from pytest_unitablate.verdicts.compare import compare_reports, comparison_page, comparison_text


def _item(id: str, **kw: Any) -> dict[str, Any]:
    base = {"spec": "s.yaml", "id": id, "outcome": "passed", "drop": 0.5, "ci_low": 0.4,
            "ci_high": 0.6}
    return {**base, **kw}


REF = {"items": [_item("flip"), _item("moved"), _item("same", drop=0.55),
                 _item("named", units=[3], matched_units=[3], similarity=[1.0],
                       min_similarity=0.75),
                 _item("lost", units=[4], matched_units=[4], similarity=[1.0],
                       min_similarity=0.75),
                 _item("layer", deciding_units=[7]), _item("gone")]}
NEW = {"items": [_item("flip", outcome="failed"), _item("moved", drop=0.2, ci_low=0.1,
                                                        ci_high=0.3),
                 _item("same", drop=0.45, ci_low=0.35, ci_high=0.55),
                 _item("named", units=[3], matched_units=[9], similarity=[0.9],
                       min_similarity=0.75),
                 _item("lost", units=[4], matched_units=[4], similarity=[0.7],
                       min_similarity=0.75),
                 _item("layer", deciding_units=[2]), _item("new")]}


def test_each_kind_of_change_is_found_and_nothing_else() -> None:
    found = {(c.kind, c.id) for c in compare_reports(REF, NEW)}
    assert found == {("outcome", "flip"), ("drop", "moved"), ("identity", "named"),
                     ("identity", "lost"), ("identity", "layer"), ("removed", "gone"),
                     ("added", "new")}
    text = comparison_text(compare_reports(REF, NEW), "a.json", "b.json")
    assert "s.yaml::moved: drop 50.0 pp -> 20.0 pp (reference 95% CI [40.0, 60.0] pp" in text
    assert "s.yaml::lost: recorded unit matched 4->4 (similarity 1.00) -> 4->none" in text
    assert text.splitlines()[-1] == ("unitablate compare: 7 change(s): 1 outcome, 1 drop, "
                                     "3 identity, 1 added, 1 removed")


def test_a_changed_baseline_is_listed_once_per_target() -> None:
    ref = {"items": [_item("a", target="one", baseline=0.98, n=60),
                     _item("b", target="one", baseline=0.98, n=60),
                     _item("c", target="two", baseline=0.90, n=60)]}
    new = {"items": [_item("a", target="one", baseline=0.72, n=60),
                     _item("b", target="one", baseline=0.72, n=60),
                     _item("c", target="two", baseline=0.90, n=60)]}
    changes = compare_reports(ref, new)
    assert [(c.kind, c.id, c.text) for c in changes] == [
        ("baseline", "one", "baseline accuracy 98.0% -> 72.0%")]


def test_flips_come_first_and_a_baseline_move_chance_explains_is_hidden_unless_asked(
        ) -> None:
    """A 1.7 pp move of 60 examples lies inside both 95% Wilson intervals: not a change
    (``show_all`` lists it); an outcome flip is listed before any baseline move, with the
    candidate's reason."""
    ref = {"items": [_item("a", target="one", baseline=0.95, n=60),
                     _item("b", target="two", baseline=0.90, n=60)]}
    new = {"items": [_item("a", target="one", baseline=0.9333, n=60),
                     _item("b", target="two", baseline=0.50, n=60, outcome="failed",
                           forgotten=True, reason="x two: class 'two' fell from 90.0% to "
                           "50.0% at baseline: its units can no longer be judged")]}
    changes = compare_reports(ref, new)
    assert [(c.kind, c.id) for c in changes] == [("outcome", "b"), ("baseline", "two")]
    assert "class 'two' fell from 90.0% to 50.0%" in changes[0].text
    every = compare_reports(ref, new, show_all=True)
    assert [(c.kind, c.id) for c in every] == [("outcome", "b"), ("baseline", "one"),
                                                ("baseline", "two")]
    text = comparison_text(changes, "ref.json", "new.json", hidden=len(every) - len(changes))
    assert text.endswith("1 baseline move(s) inside the 95% interval (chance explains "
                         "them) not listed; --all")
    page = comparison_page(changes, "ref.json", "new.json",
                           {"tested": [{"spec": "s.yaml", "weights_sha256": "aa11",
                                        "data_sha256": "dd"}]},
                           {"tested": [{"spec": "s.yaml", "weights_sha256": "bb22",
                                        "checkpoint": "cand.pt", "data_sha256": "dd"}]})
    assert "aa11 / bb22 (cand.pt)" in page
    baseline_table = page.split("<h2>baseline (1)</h2>")[1]
    assert "reference baseline" in baseline_table and "units" not in baseline_table


def test_a_drop_within_noise_and_a_new_similarity_are_not_changes() -> None:
    ref = {"items": [_item("a", units=[3], matched_units=[3], similarity=[0.99],
                           min_similarity=0.75)]}
    new = {"items": [_item("a", drop=0.58, ci_low=0.47, ci_high=0.68, units=[3],
                           matched_units=[3],
                           similarity=[0.97], min_similarity=0.75)]}
    assert compare_reports(ref, new) == []


@given(st.lists(st.fixed_dictionaries({
    "id": st.text("abc-", min_size=1, max_size=4),
    "outcome": st.sampled_from(["passed", "failed", "error"]),
    "drop": st.floats(-1, 1), "ci_low": st.floats(-1, 0), "ci_high": st.floats(0, 1),
    "deciding_units": st.none() | st.lists(st.integers(0, 9), max_size=2)}), max_size=6))
def test_a_report_compared_with_itself_has_no_change(items: list[dict[str, Any]]) -> None:
    doc = {"items": [{**i, "spec": "s.yaml", "drop": min(max(i["drop"], i["ci_low"]),
                                                         i["ci_high"])} for i in items]}
    assert compare_reports(doc, doc) == []


def test_the_command_exits_as_diff_does_and_writes_the_page(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({**REF, "torch_version": "2.14.1"}))
    b.write_text(json.dumps({**NEW, "torch_version": "2.14.1"}))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pytest_unitablate", "compare", *args],
                              capture_output=True, text=True, timeout=120)

    assert run(str(a), str(a)).returncode == 0
    changed = run(str(a), str(b), "--html", str(tmp_path / "c.html"))
    assert changed.returncode == 1 and "outcome (1):" in changed.stdout
    page = (tmp_path / "c.html").read_text()
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    assert "flip" in page and "passed -&gt; failed" in page
    (tmp_path / "bad.json").write_text("[1, 2]")
    bad = run(str(a), str(tmp_path / "bad.json"))
    assert bad.returncode == 4 and "not a pytest-unitablate JSON report" in bad.stderr


def test_the_page_lists_every_change() -> None:
    changes = compare_reports(REF, NEW)
    page = comparison_page(changes, "a.json", "b.json", REF, NEW)
    for c in changes:
        assert f"<td>{c.id}<br>" in page


def test_runs_invoked_from_other_folders_pair_by_spec_file_name() -> None:
    ref = {"items": [_item("a", spec="specs/s.yaml")]}
    new = {"items": [_item("a", spec="/ci/build/specs/s.yaml", outcome="failed")]}
    assert [(c.kind, c.id) for c in compare_reports(ref, new)] == [("outcome", "a")]


def test_a_malformed_report_is_named_not_a_traceback(tmp_path: Path) -> None:
    good, bad = tmp_path / "a.json", tmp_path / "b.json"
    good.write_text(json.dumps(REF))
    bad.write_text(json.dumps({"items": [_item("a", baseline="high")]}))
    proc = subprocess.run([sys.executable, "-m", "pytest_unitablate", "compare", str(good),
                           str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4 and "item 0 ('a'): baseline is not a number" in proc.stderr


def test_an_outcome_change_of_a_calibrated_item_says_what_the_threshold_rests_on() -> None:
    ref = {"items": [_item("any", constraint="min_drop", calibration_models=3,
                           calibration_low=0.3, calibration_high=0.5)]}
    new = {"items": [_item("any", outcome="failed", drop=0.05, ci_low=0.0, ci_high=0.1,
                           constraint="min_drop", calibration_models=3, calibration_low=0.3,
                           calibration_high=0.5)]}
    text = comparison_text(compare_reports(ref, new), "a.json", "b.json")
    assert ("s.yaml::any: passed -> failed (the threshold is calibrated over 3 reference "
            "models: 30.0-50.0 pp)") in text


def test_a_drop_is_judged_against_the_other_runs_interval_both_ways() -> None:
    """Each run's drop is held to the *other* run's interval: a narrow reference catches a
    candidate that its own wide interval would excuse, and the reverse. (Held against its
    own interval, no drop would ever move: a drop lies inside its own interval.)"""
    narrow_ref = {"items": [_item("a", drop=0.5, ci_low=0.45, ci_high=0.55)]}
    wide_new = {"items": [_item("a", drop=0.3, ci_low=0.0, ci_high=0.6)]}
    assert [c.kind for c in compare_reports(narrow_ref, wide_new)] == ["drop"]
    wide_ref = {"items": [_item("a", drop=0.5, ci_low=0.0, ci_high=0.9)]}
    narrow_new = {"items": [_item("a", drop=0.3, ci_low=0.28, ci_high=0.32)]}
    assert [c.kind for c in compare_reports(wide_ref, narrow_new)] == ["drop"]
    # each inside the other's interval: chance explains it, nothing is listed
    near = {"items": [_item("a", drop=0.45, ci_low=0.3, ci_high=0.6)]}
    assert compare_reports(wide_ref, near) == []


def test_every_outcome_change_is_listed_not_only_pass_and_fail() -> None:
    outcomes = ["passed", "failed", "error", "skipped", "xfailed"]
    for before in outcomes:
        for after in outcomes:
            ref = {"items": [_item("a", outcome=before)]}
            new = {"items": [_item("a", outcome=after)]}
            kinds = [c.kind for c in compare_reports(ref, new)]
            assert kinds == ([] if before == after else ["outcome"]), (before, after)
    # an item one run does not have is listed whatever its outcome
    for outcome in outcomes:
        only = {"items": [_item("a", outcome=outcome)]}
        assert [c.kind for c in compare_reports({"items": []}, only)] == ["added"]
        assert [c.kind for c in compare_reports(only, {"items": []})] == ["removed"]
