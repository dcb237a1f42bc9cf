"""Whether a baseline can be judged at all: at or below chance on every class."""

from __future__ import annotations

from pytest_unitablate.verdicts.fit import at_or_below_chance


def test_chance_is_one_in_the_number_of_outputs_and_exactly_chance_counts() -> None:
    assert at_or_below_chance([0.25, 0.25, 0.25, 0.25], [4, 4, 4, 4])  # exactly chance
    assert at_or_below_chance([0.5, 0.5], [2, 2])
    assert not at_or_below_chance([0.25, 0.26, 0.0, 0.0], [4, 50, 4, 4])  # one above
    assert not at_or_below_chance([0.51, 0.0], [100, 3])


def test_classes_without_examples_do_not_count() -> None:
    assert at_or_below_chance([0.1, 1.0, 0.0], [10, 0, 10])  # the 100% class has none
    assert not at_or_below_chance([0.0, 0.0], [0, 0])  # nothing to judge: nothing said
