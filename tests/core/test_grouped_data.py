"""``GroupedData``: named groups evaluated as one data set, in order; a group's data
problem names the group."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pytest_unitablate.core.data import GroupedData, iter_batches
from pytest_unitablate.errors import DataError


def _pair(n: int, label: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, 2), float(label)), torch.full((n,), label, dtype=torch.long)


def test_groups_are_read_in_order_and_each_example_knows_its_group() -> None:
    data = GroupedData([("day", _pair(3, 0)), ("night", [_pair(1, 1), _pair(2, 2)])])
    assert data.names == ("day", "night")
    labels = torch.cat([y for _, y in iter_batches(data)]).tolist()
    assert labels == [0, 0, 0, 1, 2, 2]
    assert data.group_ids().tolist() == [0, 0, 0, 1, 1, 1]
    assert data.group_ids() is data.group_ids()  # worked out once


def test_a_groups_data_problem_names_the_group() -> None:
    shuffled = DataLoader(TensorDataset(*_pair(4, 1)), batch_size=2, shuffle=True)
    with pytest.raises(DataError) as info:
        GroupedData([("day", _pair(2, 0)), ("night", shuffled)])
    assert str(info.value).startswith("data group 'night': the DataLoader draws its "
                                      "examples with RandomSampler (shuffle=True)")
    bad = GroupedData([("day", _pair(2, 0)), ("text", [(torch.zeros(2, 2), "oops")])])
    with pytest.raises(DataError) as info:
        list(bad)
    assert str(info.value).startswith("data group 'text': ")
