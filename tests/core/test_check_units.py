"""``check_units``: every unit out of range refused, word for word, with what the layer's
output shape says (and the dimension that would fit, when one would)."""

from __future__ import annotations

import pytest

from pytest_unitablate.core.layers import check_units
from pytest_unitablate.errors import UnitOutOfRangeError


def test_before_the_count_is_known_only_negative_units_are_refused_each_of_them() -> None:
    check_units("conv5", [0, 3, 99], None)
    with pytest.raises(UnitOutOfRangeError) as info:
        check_units("conv5", [0, 7, -1], None)  # the negative unit is not the first
    assert str(info.value) == ("unit -1 of layer 'conv5' is negative: units are 0-based "
                               "channel indices (NetDissect counts from 1)")
    assert (info.value.unit, info.value.channels) == (-1, -1)


@pytest.mark.parametrize(("units", "shape", "dim", "text"), [
    ([8], None, None, "unit 8 is out of range for layer 'fc', which has 8 channels (units are "
                      "0-based: 0..7; NetDissect counts from 1)"),
    ([2, -1], None, None, "unit -1 is out of range for layer 'fc', which has 8 channels "
                          "(units are 0-based: 0..7; NetDissect counts from 1)"),
    ([8], (4, 8), None, "unit 8 is out of range for layer 'fc', which has 8 channels (units "
                        "are 0-based: 0..7; NetDissect counts from 1)"),
    ([8], None, 1, "unit 8 is out of range for layer 'fc', which has 8 channels (units are "
                   "0-based: 0..7; NetDissect counts from 1)"),
    ([8], (4, 8), 1, "unit 8 is out of range for layer 'fc', whose output (N, [8]) has 8 "
                     "units along dimension 1 (units are 0-based: 0..7; NetDissect counts "
                     "from 1)"),
    ([20], (4, 8, 6, 32), 1, "unit 20 is out of range for layer 'fc', whose output (N, [8], "
                             "6, 32) has 8 units along dimension 1; if its units are along "
                             "dimension 3 (size 32), say channel_dim: -1 (units are 0-based: "
                             "0..7; NetDissect counts from 1)"),
    # no dimension has a unit 8 either (size 8 ends at 7): no hint
    ([8], (4, 8, 6, 8), 1, "unit 8 is out of range for layer 'fc', whose output (N, [8], 6, "
                           "8) has 8 units along dimension 1 (units are 0-based: 0..7; "
                           "NetDissect counts from 1)"),
])
def test_a_unit_out_of_range_is_refused_with_what_the_shape_says(
        units: list[int], shape: tuple[int, ...] | None, dim: int | None, text: str) -> None:
    with pytest.raises(UnitOutOfRangeError) as info:
        check_units("fc", units, 8, shape, dim)
    assert str(info.value) == text
    assert info.value.channels == 8
