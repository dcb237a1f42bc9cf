"""Resample ablations measure shares (each example right in some of several draws): the
measurement keeps the level, the units and the metric it was asked for, and ``of`` sends
float shares there."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_unitablate.verdicts.measure import Measurement, drop_text

BEFORE = [True] * 4
SHARES = [1.0, 0.5, 0.5, 1.0]


def test_shares_keep_the_level_units_and_metric_asked_for() -> None:
    m = Measurement.from_shares(BEFORE, SHARES, level=0.9, units=(3,))
    wide = Measurement.from_shares(BEFORE, SHARES)
    assert (m.ci_level, m.units, m.metric, m.table) == (0.9, (3,), "accuracy", None)
    assert m.drop == pytest.approx(0.25)
    # a 90% interval lies inside the default 95% one around the same mean drop
    assert wide.ci[0] < m.ci[0] < m.drop < m.ci[1] < wide.ci[1]


def test_of_measures_float_shares_as_shares_and_booleans_as_a_table() -> None:
    shares = Measurement.of("min_drop", (np.array(BEFORE), np.array(SHARES)), (None, None),
                            level=0.9, units=(3,))
    assert shares.table is None and shares.units == (3,) and shares.ci_level == 0.9
    table = Measurement.of("min_drop", (np.array(BEFORE), np.array([True, False] * 2)),
                           (None, None), units=(3,))
    assert table.table is not None and table.units == (3,)
    # plain lists have no dtype: booleans
    assert Measurement.of("min_drop", (BEFORE, [True, False] * 2), (None, None)).table \
        is not None


def test_an_unknown_value_reads_n_a() -> None:
    assert drop_text("min_drop", None) == "n/a"
    assert drop_text("min_drop", float("nan")) == "n/a"
