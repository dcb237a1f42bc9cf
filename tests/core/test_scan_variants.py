"""``variants_of``: how a scan's ``units`` become its rows (one unit, a list, unit sets),
and each bad request refused naming the layer."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_unitablate.core.scan.result import variants_of
from pytest_unitablate.errors import ConfigError


def test_units_become_rows_named_as_given() -> None:
    assert variants_of("conv5", 5) == ((5,), ((5,),))  # type: ignore[arg-type]  # one unit
    assert variants_of("conv5", np.int64(2)) == ((2,), ((2,),))  # type: ignore[arg-type]
    assert variants_of("conv5", [3, (4, 7), [7, 4, 4]]) == (
        (3, (4, 7), (7, 4)), ((3,), (4, 7), (7, 4)))


def test_a_bad_row_is_refused_naming_the_layer() -> None:
    with pytest.raises(ConfigError) as info:
        variants_of("conv5", [2, ()])
    assert str(info.value) == "scan of 'conv5': an empty set of units to ablate"
    for units in ([1.5], [(1, 2.5)]):
        with pytest.raises(TypeError, match=r"^units of layer 'conv5' must be integers, got "):
            variants_of("conv5", units)  # type: ignore[arg-type]
