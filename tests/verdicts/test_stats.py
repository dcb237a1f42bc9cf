"""Paired drop interval (Newcombe method 10) and McNemar's exact test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from pytest_unitablate.verdicts.stats import PairedTable, mcnemar_exact_p, paired_drop_ci, wilson

tables = st.builds(PairedTable, st.integers(0, 40), st.integers(0, 40), st.integers(0, 40),
                   st.integers(0, 40)).filter(lambda t: t.n > 0)


@settings(max_examples=300, deadline=None)
@given(tables, st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_interval_is_ordered_bounded_and_contains_the_estimate(
    t: PairedTable, level: float
) -> None:
    lo, hi = paired_drop_ci(t, level)
    assert -1.0 <= lo <= t.drop <= hi <= 1.0
    lo99, hi99 = paired_drop_ci(t, 0.99)
    assert lo99 <= lo + 1e-12 or level == 0.99
    assert hi99 >= hi - 1e-12 or level == 0.99


@settings(max_examples=200, deadline=None)
@given(tables)
def test_mcnemar_matches_scipy_binomial_test(t: PairedTable) -> None:
    m = t.b + t.c
    expected = 1.0 if m == 0 else binomtest(t.b, m, 0.5).pvalue
    assert mcnemar_exact_p(t) == pytest.approx(expected, rel=1e-9)  # exact: float64 arithmetic


def test_from_correct_counts_the_table() -> None:
    t = PairedTable.from_correct(
        [True, True, False, False, True], [True, False, True, False, False]
    )
    assert (t.a, t.b, t.c, t.d) == (1, 2, 1, 1)
    assert t.drop == pytest.approx(0.2)
    assert PairedTable.from_counts(a=1, b=2, c=1, d=1) == t


def test_no_discordant_pairs_and_all_flipped() -> None:
    same = PairedTable(30, 0, 0, 30)
    lo, hi = paired_drop_ci(same)
    assert lo < 0 < hi and mcnemar_exact_p(same) == 1.0
    flipped = PairedTable(0, 20, 0, 0)
    lo, hi = paired_drop_ci(flipped)
    assert hi == 1.0 and lo > 0.7
    assert mcnemar_exact_p(flipped) == pytest.approx(2 * 0.5**20)


def test_wilson_matches_closed_form() -> None:
    lo, hi = wilson(7, 20)
    z, p, n = 1.959963984540054, 0.35, 20
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (lo, hi) == pytest.approx((centre - half, centre + half))


def test_coverage_is_close_to_nominal_at_small_n() -> None:
    """Simulated paired ablations with 60 examples: 95% intervals cover the true drop."""
    rng = np.random.default_rng(0)
    # P(a), P(b), P(c), P(d): baseline 90%, ablated 75%, true drop 15 pp.
    probs = np.array([0.72, 0.18, 0.03, 0.07])
    true_drop = probs[1] - probs[2]
    hits = 0
    trials = 2000
    for counts in rng.multinomial(60, probs, size=trials):
        lo, hi = paired_drop_ci(PairedTable(*map(int, counts)))
        hits += lo <= true_drop <= hi
    assert 0.93 <= hits / trials <= 0.98


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.99, 0.999]), st.integers(1, 2000))
def test_student_t_quantile_and_p_value_match_scipy(level: float, df: int) -> None:
    from scipy.stats import t as student

    from pytest_unitablate.verdicts.stats import t_quantile, t_two_sided_p

    q = t_quantile(level, df)
    # exact: float64 arithmetic on either side, no BLAS; both converge to 1e-12
    assert q == pytest.approx(float(student.ppf((1 + level) / 2, df)), rel=1e-8)  # exact
    assert t_two_sided_p(q, df) == pytest.approx(1 - level, rel=1e-7)  # exact
    for stat in (0.0, 0.3, 1.0, 2.5, 8.0):
        expected = float(2 * student.sf(stat, df))
        assert t_two_sided_p(stat, df) == pytest.approx(expected, rel=1e-8, abs=1e-15)  # exact


def test_two_paired_values_have_a_standard_deviation_one_has_none() -> None:
    from pytest_unitablate.verdicts.stats import PairedDiffs

    two = PairedDiffs.from_values([-0.1, -0.2], [-0.5, -0.2])
    assert (two.n, two.mean) == (2, pytest.approx(0.2))
    assert two.sd == pytest.approx(math.sqrt(0.08))
    one = PairedDiffs.from_values([-0.1], [-0.5])
    assert one.mean == pytest.approx(0.4) and math.isnan(one.sd)
