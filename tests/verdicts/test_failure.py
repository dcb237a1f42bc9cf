"""The failure text: located, numeric, and ending with the command that fixes it."""

from __future__ import annotations

from pytest_unitablate.spec.model import Constraint
from pytest_unitablate.verdicts.failure import (
    FailureContext,
    failure_text,
    missing_threshold_text,
    unsupportable_text,
    warn_text,
)
from pytest_unitablate.verdicts.measure import Measurement, judge

CTX = FailureContext(where="specs/s.yaml:12", head="layer3.0[0]", ablation="zero",
                     target="four", hint="pytest --unitablate-record-mode=failed -k x")


def _m(right_before: int, right_after: int, n: int = 20) -> Measurement:
    before = [True] * right_before + [False] * (n - right_before)
    after = [True] * right_after + [False] * (n - right_after)
    return Measurement.from_correct(before, after)


def test_failure_text_says_where_what_and_how_to_fix() -> None:
    c = Constraint("min_drop", 0.5)
    m = _m(18, 12)
    headline, *lines = failure_text(CTX, c, m, judge(c, m)).splitlines()
    # what pytest's one-line summary shows: short, with the measured and the needed drop
    assert headline == "layer3.0[0] four: drop 30.0 pp, needs >= 50.0 pp"
    assert lines[0] == ("specs/s.yaml:12: layer3.0[0] (zero ablation): class 'four' must have "
                        "drop >= 50.0 pp")
    assert "baseline 90.0% (18/20)   ablated 60.0% (12/20)   n=20" in lines[1]
    assert "drop     30.0 pp" in lines[2] and "missed by 20.0 pp" in lines[2]
    assert "McNemar exact p=" in lines[3] and "6 flipped to wrong, 0 to right" in lines[3]
    assert lines[-1] == "  To re-record: pytest --unitablate-record-mode=failed -k x"


def test_layer_wide_context_names_the_deciding_units_and_notes() -> None:
    c = Constraint("max_relative_drop", 0.1)
    m = _m(10, 5)
    ctx = FailureContext(**{**CTX.__dict__, "target": "overall", "deciding": [3, 7],
                            "notes": ["2 of 8 units miss it: [3, 7]"]})
    text = failure_text(ctx, c, m, judge(c, m))
    assert "overall accuracy must have relative drop <= 10.0%" in text
    assert "deciding units: 3, 7" in text
    assert "relative drop 50.0% of the baseline" in text
    assert "missed by 40.0 points" in text
    assert "  2 of 8 units miss it: [3, 7]" in text


def test_other_messages() -> None:
    m = _m(10, 9)
    assert missing_threshold_text("s.yaml:3", "x", "min_drop", m, "cmd").endswith(
        "measured drop 5.0 pp\n  To record it: cmd")
    c = Constraint("min_drop", 0.04, warn_margin=0.05)
    assert "passes by only 1.0 pp (warn_margin 5%)" in warn_text("s.yaml:3", "x", c,
                                                                 judge(c, m))
    # 5 of 10 right: losing all of them is a 50 pp drop at most
    assert unsupportable_text("s.yaml:3", "x", Constraint("min_drop", 0.5), 5, 10) is None
    text = unsupportable_text("s.yaml:3", "x", Constraint("min_drop", 0.51), 5, 10)
    assert text is not None and "even if every one were lost" in text
    assert unsupportable_text("s.yaml:3", "x", Constraint("max_drop", 0.9), 0, 10) is None
