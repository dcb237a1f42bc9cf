"""compare's exact output: the terminal listing and the page, line by line and row by row.

The kinds, pairing and intervals are tested in ``test_compare.py``; these pin what a
reader sees (the words, numbers and units of every kind of change, the columns of each
kind's table, the runs' facts), so that a change to any of them is a decision, not an
accident.
"""

from __future__ import annotations

import re
from typing import Any

from pytest_unitablate.verdicts.compare import (
    compare_reports,
    comparison_page,
    comparison_text,
    report_problem,
)
from pytest_unitablate.verdicts.compare import (
    tested_facts as facts_of_runs,
)


def _item(id: str, **kw: Any) -> dict[str, Any]:
    base = {"spec": "s.yaml", "id": id, "outcome": "passed", "drop": 0.5, "ci_low": 0.4,
            "ci_high": 0.6}
    return {**base, **kw}


REF = {"items": [
    _item("flip"), _item("moved"), _item("gone"), _item("layer", deciding_units=[7]),
    _item("lost", units=[4], matched_units=[4], similarity=[1.0], min_similarity=0.75),
    _item("named", units=[3], matched_units=[3], similarity=[1.0], min_similarity=0.75),
    _item("acc", target="three", baseline=0.9, n=100),
    _item("acc2", target="three", baseline=0.9, n=100),
    _item("lp", target="three", metric="logprob", baseline=-0.5, n=50)]}
NEW = {"items": [
    _item("flip", outcome="failed", reason="class 'three' fell from 90.0% to 60.0%"),
    _item("moved", drop=0.2, ci_low=0.1, ci_high=0.3), _item("new"),
    _item("layer", deciding_units=[2]),
    _item("lost", units=[4], matched_units=[4], similarity=[0.7], min_similarity=0.75),
    _item("named", units=[3], matched_units=[9], similarity=[0.9], min_similarity=0.75),
    _item("acc", target="three", baseline=0.6, n=100),
    _item("acc2", target="three", baseline=0.6, n=100),
    _item("lp", target="three", metric="logprob", baseline=-0.7, n=50)]}

LISTING = """\
unitablate compare: a.json -> b.json
outcome (1):
  s.yaml::flip: passed -> failed: class 'three' fell from 90.0% to 60.0%
baseline (2):
  s.yaml::three: baseline accuracy 90.0% -> 60.0%
  s.yaml::three: baseline mean log p(true) -0.500 nats -> -0.700 nats
drop (1):
  s.yaml::moved: drop 50.0 pp -> 20.0 pp (reference 95% CI [40.0, 60.0] pp, candidate \
[10.0, 30.0] pp)
identity (3):
  s.yaml::layer: deciding unit 7 -> unit 2
  s.yaml::lost: recorded unit matched 4->4 (similarity 1.00) -> 4->none (best 0.70)
  s.yaml::named: recorded unit matched 3->3 (similarity 1.00) -> 3->9 (similarity 0.90)
added (1):
  s.yaml::new: added: passed in the candidate only
removed (1):
  s.yaml::gone: removed: passed in the reference only
unitablate compare: 9 change(s): 1 outcome, 2 baseline, 1 drop, 3 identity, 1 added, \
1 removed
unitablate compare: 2 baseline move(s) inside the 95% interval (chance explains them) \
not listed; --all"""


def test_the_listing_names_every_change_in_words_numbers_and_units() -> None:
    """An accuracy and a log-prob baseline of one target are two moves, each listed once
    (``acc2`` repeats ``acc``'s target), and every change carries both runs' records."""
    changes = compare_reports(REF, NEW)
    assert comparison_text(changes, "a.json", "b.json", hidden=2) == LISTING
    refs = {r["id"]: r for r in REF["items"]}
    news = {r["id"]: r for r in NEW["items"]}
    for c in changes:
        if c.kind == "baseline":
            assert c.reference in (refs["acc"], refs["lp"])
            assert c.candidate in (news["acc"], news["lp"])
            assert c.reference is not None and c.candidate is not None
            assert c.reference.get("metric") == c.candidate.get("metric")
        elif c.kind == "added":
            assert (c.reference, c.candidate) == (None, news[c.id])
        elif c.kind == "removed":
            assert (c.reference, c.candidate) == (refs[c.id], None)
        else:
            assert (c.reference, c.candidate) == (refs[c.id], news[c.id])


def test_agreeing_runs_say_so_and_nothing_hidden_adds_no_line() -> None:
    assert comparison_text([], "a.json", "b.json") == (
        "unitablate compare: a.json -> b.json\nunitablate compare: 0 change(s): the runs agree")


def test_a_reason_is_the_failing_candidates_and_a_recovery_has_none() -> None:
    ref = {"items": [_item("a", outcome="failed", reason="old reason")]}
    new = {"items": [_item("a", reason="stale")]}
    assert [c.text for c in compare_reports(ref, new)] == ["failed -> passed"]
    errored = {"items": [_item("a", outcome="error", reason="the layer is gone")]}
    assert [c.text for c in compare_reports({"items": [_item("a")]}, errored)] == [
        "passed -> error: the layer is gone"]


def test_a_baseline_is_compared_only_where_both_runs_have_one() -> None:
    """An item without a baseline (sorted first) neither stops the others nor moves."""
    ref = {"items": [_item("a", target="t"), _item("b", target="t", baseline=0.9, n=100),
                     _item("c", target="u", baseline=0.9, n=100)]}
    new = {"items": [_item("a", target="t", baseline=0.2, n=100),
                     _item("b", target="t", baseline=0.5, n=100),
                     _item("c", target="u", baseline=None)]}
    assert [c.text for c in compare_reports(ref, new)] == [
        "baseline accuracy 90.0% -> 50.0%"]
    assert compare_reports(new, ref, show_all=True)[0].text == (
        "baseline accuracy 50.0% -> 90.0%")
    # an unchanged baseline is no move, even when every move is shown
    assert compare_reports(ref, ref, show_all=True) == []


def test_specs_of_one_name_in_two_folders_stay_apart() -> None:
    """Both runs name the same spec paths: they pair by path, not by file name."""
    items = [_item("x", spec="a/s.yaml"), _item("x", spec="b/s.yaml", outcome="failed")]
    assert compare_reports({"items": items}, {"items": list(items)}) == []
    ref = {"items": [_item("x", spec="specs/s.yaml")]}
    new = {"items": [_item("x", spec="/ci/specs/s.yaml", outcome="failed")]}
    assert [(c.spec, c.id) for c in compare_reports(ref, new)] == [("s.yaml", "x")]


def _rows(page: str, kind: str) -> list[str]:
    table = page.split(f"<h2>{kind} (")[1].split("</table>")[0]
    return re.findall(r"<tr>(.*?)</tr>", table)


BADGE = '<span class="badge" style="background:{}">{}</span>'
PASSED, FAILED = BADGE.format("#2e7d32", "passed"), BADGE.format("#c62828", "failed")
ENV_A = {"pytest_unitablate_version": "0.4.0", "torch_version": "2.14.1", "device": "cpu",
         "dtype": "float32", "tested": [{"spec": "specs/s.yaml", "weights_sha256": "aaa",
                                         "checkpoint": "ref.pt", "data_sha256": "ddd"}]}
ENV_B = {"pytest_unitablate_version": "0.4.0", "torch_version": "2.13.0", "device": "cpu",
         "dtype": "bfloat16", "tested": [{"spec": "/ci/specs/s.yaml", "weights_sha256": "bbb",
                                          "data_sha256": "ddd"}, {"spec": "t.yaml"}, "junk"]}


def test_the_page_has_a_table_per_kind_with_only_its_columns() -> None:
    page = comparison_page(compare_reports(REF, NEW), "a.json", "b.json", ENV_A, ENV_B,
                           hidden=2)
    assert ('<p class="summary">9 change(s) from <code>a.json</code> to <code>b.json</code> '
            "(2 baseline move(s) inside the 95% interval (chance explains them) not listed; "
            "--all)</p>") in page
    assert _rows(page, "outcome") == [
        "<th>item</th><th>reference</th><th>candidate</th><th>reference drop</th>"
        "<th>candidate drop</th><th>change</th>",
        f'<td>flip<br><small>s.yaml</small></td><td>{PASSED}</td><td>{FAILED}</td>'
        '<td class="num">50.0 pp</td><td class="num">50.0 pp</td>'
        "<td class=\"reason\">passed -&gt; failed: class &#x27;three&#x27; fell from 90.0% "
        "to 60.0%</td>"]
    assert _rows(page, "baseline") == [
        "<th>target</th><th>reference baseline</th><th>candidate baseline</th><th>n</th>"
        "<th>change</th>",
        '<td>three<br><small>s.yaml</small></td><td class="num">90.0%</td>'
        '<td class="num">60.0%</td><td class="num">100 / 100</td>'
        '<td class="reason">baseline accuracy 90.0% -&gt; 60.0%</td>',
        '<td>three<br><small>s.yaml</small></td><td class="num">-0.500 nats</td>'
        '<td class="num">-0.700 nats</td><td class="num">50 / 50</td>'
        '<td class="reason">baseline mean log p(true) -0.500 nats -&gt; -0.700 nats</td>']
    assert _rows(page, "drop") == [
        "<th>item</th><th>reference drop</th><th>candidate drop</th><th>change</th>",
        '<td>moved<br><small>s.yaml</small></td><td class="num">50.0 pp [40.0, 60.0] pp</td>'
        '<td class="num">20.0 pp [10.0, 30.0] pp</td><td class="reason">drop 50.0 pp -&gt; '
        "20.0 pp (reference 95% CI [40.0, 60.0] pp, candidate [10.0, 30.0] pp)</td>"]
    assert _rows(page, "identity")[0] == (
        "<th>item</th><th>reference units</th><th>candidate units</th><th>change</th>")
    assert _rows(page, "identity")[2] == (
        "<td>lost<br><small>s.yaml</small></td><td>4-&gt;4 (similarity 1.00)</td>"
        "<td>4-&gt;none (best 0.70)</td><td class=\"reason\">recorded unit matched 4-&gt;4 "
        "(similarity 1.00) -&gt; 4-&gt;none (best 0.70)</td>")
    assert _rows(page, "added") == [
        "<th>item</th><th>candidate</th><th>change</th>",
        f'<td>new<br><small>s.yaml</small></td><td>{PASSED}</td>'
        '<td class="reason">added: passed in the candidate only</td>']
    assert _rows(page, "removed") == [
        "<th>item</th><th>reference</th><th>change</th>",
        f'<td>gone<br><small>s.yaml</small></td><td>{PASSED}</td>'
        '<td class="reason">removed: passed in the reference only</td>']
    assert "<title>pytest-unitablate: what changed</title>" in page
    assert "<h1>pytest-unitablate: what changed</h1>" in page
    assert "The runs agree" not in page


def test_the_page_says_what_each_run_tested() -> None:
    page = comparison_page([], "a.json", "b.json", ENV_A, ENV_B)
    facts = re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", page)
    assert facts == [
        ("pytest_unitablate_version (reference / candidate)", "0.4.0 / 0.4.0"),
        ("torch_version (reference / candidate)", "2.14.1 / 2.13.0"),
        ("device (reference / candidate)", "cpu / cpu"),
        ("dtype (reference / candidate)", "float32 / bfloat16"),
        ("s.yaml: weights sha256 (reference / candidate)", "aaa (ref.pt) / bbb"),
        ("s.yaml: data sha256 (reference / candidate)", "ddd / ddd"),
        ("t.yaml: weights sha256 (reference / candidate)", "? / ?"),
        ("t.yaml: data sha256 (reference / candidate)", "? / ?")]
    assert "<p>The runs agree: no outcome, drop or identity changed.</p>" in page
    assert "<h2>" + "Runs</h2>" in page and "not listed" not in page
    assert facts_of_runs({}, {"tested": None}) == []


def test_report_problems_name_the_item_and_field() -> None:
    assert report_problem([1]) == "not a pytest-unitablate JSON report (no items list)"
    assert report_problem({"items": {}}) == (
        "not a pytest-unitablate JSON report (no items list)")
    assert report_problem({"items": [{"id": "a"}, "b"]}) == "item 1 is not a record with an id"
    assert report_problem({"items": [{"drop": 1}]}) == "item 0 is not a record with an id"
    for field in ("baseline", "drop", "ci_low", "ci_high"):
        assert report_problem({"items": [{"id": "a", field: True}]}) == (
            f"item 0 ('a'): {field} is not a number")
        assert report_problem({"items": [{"id": "a", field: None}, {"id": "b", field: 1}]}
                              ) is None
    assert report_problem({"items": [{"id": "a", "drop": 0.5, "reason": "x"}]}) is None
