"""The order of spec items on xdist workers (plugin.schedule.spread)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pytest_unitablate.plugin.schedule import spread

# items as (group, check), in collection order: checks of one group, items of one check
_items = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.integers(1, 3)),
                  max_size=12).map(
    lambda checks: [(g, (g, c, i)) for i, (g, c, n) in enumerate(checks) for _ in range(n)])


@given(_items)
def test_spread_keeps_checks_together_and_turns_over_the_groups(keys: list) -> None:
    order = spread(keys)
    assert sorted(order) == list(range(len(keys)))  # a permutation: nothing lost
    checks = [keys[p][1] for p in order]
    runs = [c for i, c in enumerate(checks) if i == 0 or checks[i - 1] != c]
    assert len(runs) == len(set(checks))  # each check's items side by side
    for i in range(1, len(runs)):  # and next to another group's check while one is left
        here, before = runs[i][0], runs[i - 1][0]
        later_groups = {c[0] for c in runs[i:]}
        assert here != before or later_groups == {here}
    # each group's checks keep their collection order
    for group in {k[0] for k in keys}:
        mine = [c for c in runs if c[0] == group]
        assert mine == sorted(mine, key=lambda c: c[2])


def test_the_items_of_a_check_go_out_as_one_run() -> None:
    keys = [("a", 1), ("a", 1), ("a", 2), ("a", 2), ("b", 3), ("b", 3), ("c", 4)]
    assert spread(keys) == [0, 1, 4, 5, 6, 2, 3]
