"""Every failure text, word for word, against a golden file.

``test_failure.py`` checks what each message must say; this pins how each reads, for each
kind of measurement (a 2x2 table, a relative drop, a log-probability, resample shares, a
class's own accuracy) and each variant (one or several deciding units, heads, groups,
notes, the weights under test, a calibrate hint; dead, unmatched, disarmed, weak,
unguardable, unsupportable, missing and warned items). After an intended change,
regenerate the file and read its diff:
``UNITABLATE_REGOLD=1 pytest tests/verdicts/test_failure_texts.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from pytest_unitablate.spec.model import Constraint
from pytest_unitablate.verdicts import failure as f
from pytest_unitablate.verdicts.calibration import Point, calibrated_threshold
from pytest_unitablate.verdicts.measure import Measurement, judge

GOLDEN = Path(__file__).parent / "golden" / "failure_texts.json"

TABLE = Measurement.from_correct([True] * 18 + [False] * 2, [True] * 11 + [False] * 9)
LOGPROB = Measurement.from_logprob([-0.1, -0.2, -0.3, -0.2], [-0.6, -0.2, -1.3, -0.4])
SHARES = Measurement.from_shares([True] * 8 + [False] * 2,
                                 [1.0, 0.5, 0.5, 0.0, 1.0, 1.0, 0.25, 0.75, 0.0, 0.0])
OWN = Measurement.from_correct([True] * 7 + [False] * 3, [True] * 7 + [False] * 3)
NONE = Measurement.from_correct([True] * 10, [True] * 10)
#: two examples the ablation gets right that the baseline got wrong
RECOVERED = Measurement.from_correct([True] * 8 + [False] * 2,
                                     [True] * 5 + [False] * 3 + [True] * 2)
#: a log-prob drop strong and sure enough to guard what accuracy cannot
STRONG = Measurement.from_logprob([-0.1] * 10 + [-0.2] * 10, [-1.5] * 10 + [-2.5] * 10)
FORGOT = Measurement.from_correct([False] * 10, [False] * 10)


def _ctx(**kw: object) -> f.FailureContext:
    base: dict[str, object] = {"where": "s.yaml:9", "head": "conv5-u3",
                               "ablation": "zero", "target": "seven", "hint": "cmd"}
    return f.FailureContext(**{**base, **kw})  # type: ignore[arg-type]


def _failure(ctx: f.FailureContext, c: Constraint, m: Measurement) -> str:
    return f.failure_text(ctx, c, m, judge(c, m))


MATCH = SimpleNamespace(recorded=10, unit=7, similarity=0.41, best_unit=7,
                        best_similarity=0.41)
TAKEN = SimpleNamespace(recorded=11, unit=None, similarity=None, best_unit=3,
                        best_similarity=0.9)
#: recorded unit 12's best match (7) went to recorded unit 10; it got unit 5
SECOND = SimpleNamespace(recorded=12, unit=5, similarity=0.6, best_unit=7, best_similarity=0.9)
#: ... and recorded unit 13 got none
NOTHING_LEFT = SimpleNamespace(recorded=13, unit=None, similarity=None, best_unit=7,
                               best_similarity=0.8)
CALIBRATED = calibrated_threshold("min_drop", [Point(0.016, 0.0), Point(0.885, 0.8),
                                               Point(0.803, 0.7)])
DEAD_RECORD = {"recorded_units": [37, 38], "matched_units": [12, 13],
               "similarity": [0.91, 0.5], "recorded_drop": 0.103}

CASES: dict[str, Callable[[], object]] = {
    "table": lambda: _failure(_ctx(), Constraint("min_drop", 0.6), TABLE),
    "table, relative, one deciding head, notes, weights, calibrate": lambda: _failure(
        _ctx(deciding=[4], noun="head", notes=("note one", "note two"),
             weights="sha256 1a2b (c.pt)",
             hint="pytest --unitablate-record-mode=calibrate"),
        Constraint("min_relative_drop", 0.5), TABLE),
    "table, overall, several deciding units": lambda: _failure(
        _ctx(target="overall", deciding=[1, 2]), Constraint("min_drop", 0.5, confidence=0.9),
        TABLE),
    "table, max_drop, group": lambda: _failure(_ctx(kind="group"),
                                               Constraint("max_drop", 0.1), TABLE),
    "logprob, class": lambda: _failure(_ctx(), Constraint("min_logprob_drop", 1.0), LOGPROB),
    "logprob, overall": lambda: _failure(_ctx(target="overall", deciding=[2]),
                                         Constraint("max_logprob_drop", 0.1), LOGPROB),
    "logprob, group": lambda: _failure(_ctx(kind="group"),
                                       Constraint("min_logprob_drop", 1.0), LOGPROB),
    "shares": lambda: _failure(_ctx(ablation="resample"), Constraint("min_drop", 0.6),
                               SHARES),
    "shares, relative": lambda: _failure(_ctx(), Constraint("min_relative_drop", 0.9),
                                         SHARES),
    "own accuracy": lambda: _failure(_ctx(target="seven"), Constraint("min_accuracy", 0.9),
                                     OWN),
    "headline, relative": lambda: f.headline(_ctx(), Constraint("min_relative_drop", 0.5),
                                             TABLE),
    "headline, logprob": lambda: f.headline(_ctx(), Constraint("max_logprob_drop", 0.1),
                                            LOGPROB),
    "headline, accuracy": lambda: f.headline(_ctx(), Constraint("min_accuracy", 0.9), OWN),
    "forgotten": lambda: f.forgotten_text(_ctx(), Constraint("min_drop", 0.9), OWN,
                                          judge(Constraint("min_drop", 0.9), OWN), 0.87),
    "forgotten, no reference": lambda: f.forgotten_text(
        _ctx(kind="group", notes=("n",)), Constraint("min_drop", 0.9), OWN,
        judge(Constraint("min_drop", 0.9), OWN), None),
    "forgotten headline": lambda: f.forgotten_headline(_ctx(), OWN, None),
    "problem": lambda: f.problem_text("s.yaml:6: no layer 'hiden'; did you mean 'hidden'?"),
    "disarmed": lambda: f.disarmed_text(_ctx(), "min_drop", NONE, "it passes whatever"),
    "disarmed, first, logprob": lambda: f.disarmed_text(
        _ctx(noun="head", target="overall"), "min_logprob_drop", LOGPROB, "r", first=True),
    "weak": lambda: f.weak_text(_ctx(), "min_drop", TABLE, "keeps 15%", 150, LOGPROB, 0.5),
    "weak, logprob, no count, no other": lambda: f.weak_text(
        _ctx(target="overall"), "min_logprob_drop", LOGPROB, "keeps 5%", None, None, 0.25),
    "weak, relative": lambda: f.weak_text(_ctx(), "min_relative_drop", TABLE, "r", 40,
                                          TABLE, 0.5),
    "missing threshold": lambda: f.missing_threshold_text("s.yaml:9", "x", "min_drop",
                                                          TABLE, "cmd"),
    "missing threshold, logprob": lambda: f.missing_threshold_text(
        "s.yaml:9", "x", "max_logprob_drop", LOGPROB, "cmd"),
    "warn": lambda: f.warn_text("s.yaml:9", "x", Constraint("min_drop", 0.3, warn_margin=0.1),
                                judge(Constraint("min_drop", 0.3), TABLE)),
    "warn, logprob, no band": lambda: f.warn_text(
        "s.yaml:9", "x", Constraint("min_logprob_drop", 0.3),
        judge(Constraint("min_logprob_drop", 0.3), LOGPROB)),
    "unsupportable": lambda: f.unsupportable_text("s.yaml:3", "x", Constraint("min_drop", 0.9),
                                                  hits=5, n=10),
    "unsupportable, confidence": lambda: f.unsupportable_text(
        "s.yaml:3", "x", Constraint("min_relative_drop", 0.95, confidence=0.9), hits=5, n=10),
    "supportable": lambda: [f.unsupportable_text("s", "x", c, hits=5, n=10) for c in (
        Constraint("min_drop", 0.5), Constraint("max_drop", 0.9), Constraint("min_drop", None),
        Constraint("min_logprob_drop", 9.0), Constraint("min_accuracy", 0.9))],
    "unguardable": lambda: f.unguardable_text("s.yaml:9", "x", "min_drop", CALIBRATED,
                                              "it passes whatever"),
    "unguardable, named": lambda: f.unguardable_text("s.yaml:9", "x", "min_drop", CALIBRATED,
                                                     "r", named=True),
    "unguardable, max": lambda: f.unguardable_text("s.yaml:9", "x", "max_drop", CALIBRATED,
                                                   "r", named=True),
    "dead, one": lambda: f.dead_text(_ctx(head="mlp-u37"), "mlp", {37: 0.02},
                                     {**DEAD_RECORD, "constraint": "min_drop"}, TABLE),
    "dead, several": lambda: f.dead_text(_ctx(head="mlp-u37"), "mlp", {38: 0.0, 37: 0.01},
                                         DEAD_RECORD, TABLE),
    "no match": lambda: f.no_match_text("s.yaml:9", "x", "layer3.0", [MATCH], 0.75,
                                        {10: MATCH}),
    "no match, heads, taken": lambda: f.no_match_text(
        "s.yaml:9", "x", "blocks.0.attn", [MATCH, TAKEN], 0.75, {10: MATCH, 11: TAKEN},
        noun="head"),
    "table, some recovered": lambda: _failure(_ctx(), Constraint("min_drop", 0.6), RECOVERED),
    "forgotten, relative": lambda: f.forgotten_text(
        _ctx(), Constraint("min_relative_drop", 0.9), FORGOT,
        judge(Constraint("min_relative_drop", 0.9), FORGOT), None),
    "problem, long, several lines": lambda: f.problem_text(
        "s.yaml:6: " + "word " * 30 + "\n  second line\n  third line"),
    "problem, several short lines": lambda: f.problem_text("s.yaml:6: short\n  two\n  three"),
    "problem, exactly 100": lambda: f.problem_text("s.yaml:6: " + "x" * 100),
    "disarmed, max": lambda: f.disarmed_text(_ctx(), "max_drop", TABLE, "r"),
    "disarmed, accuracy": lambda: f.disarmed_text(_ctx(), "min_accuracy", OWN, "r"),
    "weak, a strong log-prob drop": lambda: f.weak_text(
        _ctx(), "min_drop", TABLE, "keeps 15%", None, STRONG, 0.25),
    "weak, the other shows nothing": lambda: f.weak_text(
        _ctx(), "min_logprob_drop", LOGPROB, "keeps 5%", None, NONE, 0.25),
    "weak, a strong accuracy drop": lambda: f.weak_text(
        _ctx(), "min_logprob_drop", LOGPROB, "keeps 5%", None, TABLE, 0.25),
    "dead, logprob": lambda: f.dead_text(
        _ctx(head="mlp-u37"), "mlp", {37: 0.0},
        {**DEAD_RECORD, "constraint": "min_logprob_drop", "recorded_drop": 0.9}, LOGPROB),
    "no match, the best was taken": lambda: f.no_match_text(
        "s.yaml:9", "x", "layer3.0", [SECOND, NOTHING_LEFT], 0.75,
        {10: MATCH, 12: SECOND, 13: NOTHING_LEFT}),
    "pct": lambda: [f.pct(None), f.pct(float("nan")), f.pct(0.12345), f.pct(1.0)],
}


def _texts() -> dict[str, object]:
    return {name: make() for name, make in CASES.items()}


def test_every_failure_text_reads_as_the_golden_file() -> None:
    texts = _texts()
    if os.environ.get("UNITABLATE_REGOLD"):
        GOLDEN.write_text(json.dumps(texts, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert sorted(expected) == sorted(texts)
    for name, text in texts.items():
        assert text == expected[name], f"{name!r} differs (UNITABLATE_REGOLD=1 to accept)"
