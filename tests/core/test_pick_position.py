"""``pick_position``: the logits a language model's target is read at, against an oracle
of the test's own (a loop over examples), and every refusal with its message."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_unitablate.core.tokens import PositionError, check_position, pick_position
from pytest_unitablate.errors import ConfigError


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5), st.integers(1, 6), st.data())
def test_each_example_is_read_at_its_last_kept_position(n: int, t: int, data: st.DataObject
                                                        ) -> None:
    logits = torch.randn(n, t, 3)
    mask = torch.tensor([[int(x) for x in data.draw(
        st.lists(st.booleans(), min_size=t, max_size=t).filter(any))] for _ in range(n)])
    got = pick_position(logits, "last", mask)
    for i in range(n):
        last = max(j for j in range(t) if mask[i, j])
        assert torch.equal(got[i], logits[i, last])
    assert torch.equal(pick_position(logits, "last"), logits[:, t - 1])
    for p in range(-t, t):
        assert torch.equal(pick_position(logits, p), logits[:, p])


def test_refusals_say_what_and_where() -> None:
    logits = torch.zeros(2, 3, 4)
    with pytest.raises(PositionError, match=r"^position: last needs \(N, T, V\) next-token "
                                            r"logits; the model returned logits of shape "
                                            r"\(2, 4\)$"):
        pick_position(torch.zeros(2, 4), "last")
    with pytest.raises(PositionError, match=r"^position: last: the attention_mask has shape "
                                            r"\(2, 2\), the logits \(2, 3, 4\)$"):
        pick_position(logits, "last", torch.ones(2, 2))
    with pytest.raises(PositionError, match=r"^position: last: an example's attention_mask "
                                            r"keeps no position$"):
        pick_position(logits, "last", torch.tensor([[1, 0, 0], [0, 0, 0]]))
    for outside in (3, -4):
        with pytest.raises(PositionError, match=rf"^position: {outside} is outside the 3 "
                                                r"positions of the logits$"):
            pick_position(logits, outside)
    assert check_position(-1) == -1 and check_position("last") == "last"
    assert check_position(0) == 0
    for bad in (True, "first", 1.0, None):
        with pytest.raises(ConfigError) as err:
            check_position(bad)
        assert str(err.value) == f"position must be an index (e.g. -1) or 'last', got {bad!r}"
