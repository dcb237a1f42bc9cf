"""Why a threshold record mode would write cannot fail (``vacuous_threshold``) or guards
too little (``weak_threshold``), word for word at each rule's boundary, for accuracy,
relative and log-prob kinds. The measurements are counted by hand: 6 of 58 examples lost
(a drop of 10.3 pp, one example 1.7 pp), and 10 of 40 right lost at a baseline of 80%
(a relative drop of 25%, one example 2.5% of the baseline)."""

from __future__ import annotations

import math

import pytest

from pytest_unitablate.verdicts.measure import Measurement, vacuous_threshold, weak_threshold

SIX_OF_58 = Measurement.from_correct([True] * 58, [True] * 52 + [False] * 6)
TEN_OF_40 = Measurement.from_correct([True] * 40 + [False] * 10, [True] * 30 + [False] * 20)
KEEPS = "keeps {share} of the measured {what} of {effect} (less than 50%)"


@pytest.mark.parametrize(("m", "kind", "value", "reason"), [
    (SIX_OF_58, "min_drop", 0.016, "a min_drop of 1.6 pp " + KEEPS.format(
        share="15%", what="drop", effect="10.3 pp") + ", and one example of 58 (1.7 pp) "
        "meets it"),
    (SIX_OF_58, "min_drop", 0.0517, "a min_drop of 5.2 pp " + KEEPS.format(
        share="49%", what="drop", effect="10.3 pp")),  # 49.98%: floored, not 50%
    (SIX_OF_58, "min_drop", 0.0518, None),
    (TEN_OF_40, "min_relative_drop", 0.0125, "a min_relative_drop of 1.2% " + KEEPS.format(
        share="5%", what="relative drop", effect="25.0%") + ", and one example of 50 "
        "(2.5%) meets it"),
    (TEN_OF_40, "min_relative_drop", 0.03, "a min_relative_drop of 3.0% " + KEEPS.format(
        share="12%", what="relative drop", effect="25.0%")),
    (TEN_OF_40, "min_drop", 0.02, "a min_drop of 2.0 pp " + KEEPS.format(
        share="10%", what="drop", effect="20.0 pp") + ", and one example of 50 (2.0 pp) "
        "meets it"),
    (SIX_OF_58, "min_logprob_drop", 0.0001, "a min_logprob_drop of 0.000 nats keeps 0% "
        "of the measured drop of 0.103 nats (less than 50%)"),
    (SIX_OF_58, "max_drop", 0.001, None),  # a max_* threshold is never weak
])
def test_a_weak_threshold_says_how_little_it_keeps(m: Measurement, kind: str, value: float,
                                                   reason: str | None) -> None:
    assert weak_threshold(kind, value, m) == reason


def test_no_share_asked_or_no_effect_is_never_weak() -> None:
    assert weak_threshold("min_drop", 0.016, SIX_OF_58, share=0) is None
    nothing = Measurement.from_correct([True] * 10, [True] * 10)
    assert weak_threshold("min_drop", 0.01, nothing) is None
    assert math.isclose(SIX_OF_58.value("min_drop"), 6 / 58)


@pytest.mark.parametrize(("args", "reason"), [
    (("min_drop", 1e-13, 0.9),
     "a min_drop of 0.0 pp (at or below 0) passes whatever the ablation does"),
    (("min_drop", 0.05, 0.9, 0.05), None),  # at the floor
    (("min_drop", 0.049, 0.9, 0.05), "a min_drop of 4.9 pp is below the record floor of "
                                     "5.0 pp"),
    (("min_logprob_drop", 0.01, 0.9, 0.05), None),  # the floor is an accuracy's
    (("max_drop", 0.8, 0.8), "a max_drop of 80.0 pp allows every drop: the baseline "
                             "accuracy is 80.0%"),
    (("max_drop", 0.79, 0.8), None),
    (("max_relative_drop", 1.0, 0.8), "a max_relative_drop of 100.0% allows every drop: "
                                      "the baseline accuracy is 80.0%"),
    (("max_relative_drop", 0.99, 0.8), None),  # a relative drop goes up to 100%
    (("max_logprob_drop", math.inf, 0.8), "a max_logprob_drop of inf allows every drop: "
                                          "the interval is unbounded (one example)"),
    (("max_logprob_drop", 5.0, 0.8), None),
])
def test_a_vacuous_threshold_says_why_it_cannot_fail(args: tuple[object, ...],
                                                     reason: str | None) -> None:
    assert vacuous_threshold(*args) == reason  # type: ignore[arg-type]
