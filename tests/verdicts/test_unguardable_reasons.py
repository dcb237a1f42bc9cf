"""Why a calibrated threshold cannot guard, word for word, at each rule's boundary: one
example of the fewest flipping meets it (for a relative drop, one example of the
baseline's share), it keeps less than a quarter of the smallest effect the models showed
(floored, so a share just under a quarter never reads as 25%), or the record floor; and
how a measured range is written."""

from __future__ import annotations

import pytest

from pytest_unitablate.verdicts.calibration import Calibrated, unguardable_reason

SHARE = ("a {kind} of {written} keeps {share} of the smallest effect the models showed "
         "({low}; less than 25%): a unit that lost most of its role would still pass")


@pytest.mark.parametrize(("found", "reason"), [
    (Calibrated("min_drop", 0.05, 3, 0.3, 0.5, n=20, baseline=0.9),
     "a min_drop of 5.0 pp is met by one example of 20 (5.0 pp) flipping to wrong"),
    (Calibrated("min_drop", 0.06, 3, 0.3, 0.5, n=20, baseline=0.9),
     SHARE.format(kind="min_drop", written="6.0 pp", share="20%", low="30.0 pp")),
    (Calibrated("min_relative_drop", 0.10, 3, 0.5, 0.8, n=20, baseline=0.5),
     "a min_relative_drop of 10.0% is met by one example of 20 (10.0%) flipping to wrong"),
    (Calibrated("min_relative_drop", 0.11, 3, 0.5, 0.8, n=20, baseline=0.5),
     SHARE.format(kind="min_relative_drop", written="11.0%", share="22%", low="50.0%")),
    (Calibrated("min_drop", 0.1, 3, 0.4, 0.5, n=100, baseline=0.9), None),  # 25% exactly
    (Calibrated("min_drop", 0.099, 3, 0.4, 0.5, n=100, baseline=0.9),
     SHARE.format(kind="min_drop", written="9.9 pp", share="24%", low="40.0 pp")),
    # floored: 9.9 / 49.9 is 19.84%, never rounded up to 20%
    (Calibrated("min_drop", 0.099, 3, 0.499, 0.9, n=100, baseline=0.9),
     SHARE.format(kind="min_drop", written="9.9 pp", share="19%", low="49.9 pp")),
    # one example of one: any drop it could show is one example flipping
    (Calibrated("min_drop", 0.5, 3, 0.6, 0.9, n=1, baseline=0.9),
     "a min_drop of 50.0 pp is met by one example of 1 (100.0 pp) flipping to wrong"),
    # no count of examples known (n=0): the one-example rule cannot apply
    (Calibrated("min_drop", 0.2, 3, 0.4, 0.5, n=0, baseline=0.9), None),
    # a relative drop of a target whose baseline is 0: one example is counted unscaled
    (Calibrated("min_relative_drop", 0.2, 3, 0.4, 0.5, n=20, baseline=0.0), None),
    (Calibrated("min_logprob_drop", 0.1, 3, 0.5, 0.9, n=5, baseline=0.9),
     SHARE.format(kind="min_logprob_drop", written="0.100 nats", share="20%",
                  low="0.500 nats")),
    # an accuracy threshold is not a drop: one example flipping is no argument against it
    (Calibrated("min_accuracy", 0.04, 3, 0.5, 0.9, n=25, baseline=0.9),
     SHARE.format(kind="min_accuracy", written="4.0%", share="8%", low="50.0%")),
])
def test_each_rule_gives_its_reason(found: Calibrated, reason: str | None) -> None:
    assert unguardable_reason(found.kind, found) == reason


def test_the_record_floor_comes_first() -> None:
    found = Calibrated("min_drop", 0.2, 3, 0.4, 0.5, n=100, baseline=0.9)
    assert unguardable_reason("min_drop", found) is None
    assert unguardable_reason("min_drop", found, floor=0.3) == (
        "a min_drop of 20.0 pp is below the record floor of 30.0 pp")


@pytest.mark.parametrize(("found", "text"), [
    (Calibrated("min_drop", 0.1, 3, 0.123, 0.456), "12.3-45.6 pp"),
    (Calibrated("min_logprob_drop", 0.1, 3, 0.12, 0.456), "0.120-0.456 nats"),
    (Calibrated("min_accuracy", 0.1, 3, 0.988, 1.0), "98.8-100.0%"),
    (Calibrated("min_drop", 0.1, 3, -0.01, 0.5), "-1.0-50.0 pp"),
])
def test_a_range_names_its_unit_once(found: Calibrated, text: str) -> None:
    assert found.range_text() == text
    assert found.rests_on() == f"over 3 models: measured {text}"
    assert Calibrated("min_drop", 0.1, 1, 0.1, 0.2).rests_on() == (
        "over 1 model: measured 10.0-20.0 pp")
