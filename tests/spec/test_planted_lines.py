"""Bug classes a user would not see, each with a test that fails when it is planted:
outward rounding that takes float noise for a real excess, an item located at its
expectation instead of its constraint, a duplicate key's "first at line" off by one."""

from __future__ import annotations

import pytest

from pytest_unitablate.errors import SpecError
from pytest_unitablate.spec.ids import item_ids
from pytest_unitablate.spec.loader import load_spec
from pytest_unitablate.spec.rewrite import format_threshold, rounded_threshold


@pytest.mark.parametrize(("kind", "value", "written"), [
    ("max_drop", 0.1 + 0.2, "30.0%"),        # 0.30000000000000004: noise, not 30.1%
    ("min_drop", 0.123, "12.3%"),            # 122.99999999999999 tenths: noise, not 12.2%
    ("max_drop", 0.3001, "30.1%"),           # a real excess rounds up
    ("min_drop", 0.1229, "12.2%"),           # a real shortfall rounds down
])
def test_outward_rounding_tolerates_float_noise(kind: str, value: float, written: str) -> None:
    assert format_threshold(kind, value) == written  # type: ignore[arg-type]
    assert rounded_threshold(kind, value) == pytest.approx(float(written[:-1]) / 100, abs=1e-12)


SPEC = """\
unitablate: 1
model: m
data: d
checks:
  - layer: conv5
    units: [3]
    expect:
      overall:
        max_drop: 5%
        min_drop: 1%
"""


def test_an_item_is_located_at_its_constraint_not_its_expectation() -> None:
    spec = load_spec("s.yaml", text=SPEC)
    lines = {key.id: key.line for key in item_ids(spec)}
    assert lines == {"conv5-u3-overall-max_drop": 9, "conv5-u3-overall-min_drop": 10}


def test_a_duplicate_key_names_the_line_of_the_first() -> None:
    text = SPEC.replace("        min_drop: 1%\n", "        max_drop: 1%\n")
    with pytest.raises(SpecError) as info:
        load_spec("s.yaml", text=text)
    (problem,) = info.value.problems
    assert problem.line == 10
    assert "duplicate key 'max_drop' (first at line 9)" in problem.message
