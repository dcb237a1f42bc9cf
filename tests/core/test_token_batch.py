"""``TokenBatch``: a tokenizer's dict of tensors, sliced, moved, copied and shown as one."""

from __future__ import annotations

import torch

from pytest_unitablate.core.tokens import TokenBatch


def _batch() -> TokenBatch:
    ids = torch.arange(6.0, requires_grad=True).reshape(2, 3)
    return TokenBatch({"input_ids": ids, "attention_mask": torch.ones(2, 3, dtype=torch.long)})


def test_detach_and_clone_give_new_tensors_under_the_same_keys() -> None:
    batch = _batch()
    detached, cloned = batch.detach(), batch.clone()
    for copy in (detached, cloned):
        assert isinstance(copy, TokenBatch) and list(copy) == ["input_ids", "attention_mask"]
        for key in batch:
            assert torch.equal(copy[key], batch[key])
    assert not detached["input_ids"].requires_grad and batch["input_ids"].requires_grad
    cloned["attention_mask"][0, 0] = 0  # a clone is its own storage
    assert int(batch["attention_mask"][0, 0]) == 1
    assert detached["attention_mask"].data_ptr() == batch["attention_mask"].data_ptr()


def test_repr_shows_each_key_and_shape() -> None:
    assert repr(_batch()) == "TokenBatch(input_ids: (2, 3), attention_mask: (2, 3))"
    assert repr(TokenBatch({})) == "TokenBatch()"


def test_to_passes_positional_and_keyword_arguments_to_every_tensor() -> None:
    batch = _batch()
    wide = batch.to(torch.float64)
    assert wide["input_ids"].dtype == torch.float64
    assert wide["attention_mask"].dtype == torch.float64
    half = batch.to(dtype=torch.float16)
    assert {half[k].dtype for k in half} == {torch.float16}


def test_a_mapping_that_is_no_batch_is_refused_saying_where_and_what() -> None:
    import re

    import pytest

    from pytest_unitablate.errors import DataError

    ids = torch.zeros(2, 3, dtype=torch.long)
    cases = [
        ({}, "the inputs are an empty dict"),
        ({"input_ids": [1, 2]}, "the inputs dict maps 'input_ids' to a list; every value "
                                "must be a tensor"),
        ({0: ids}, "the inputs dict maps 0 to a Tensor; every value must be a tensor"),
        ({"input_ids": ids, "scale": torch.tensor(2.0)},
         "inputs['scale'] is a scalar; expected a batch"),
        ({"input_ids": ids, "attention_mask": torch.ones(3, 3)},
         "the inputs' tensors hold different numbers of examples ({'input_ids': 2, "
         "'attention_mask': 3})"),
    ]
    for value, message in cases:
        with pytest.raises(DataError, match=f"^{re.escape('data.py:7: ' + message)}$"):
            TokenBatch.checked("data.py:7", value)
    # a 1-D tensor is a batch of scalars; equal sizes pass
    one = TokenBatch.checked("data.py:7", {"input_ids": ids, "label": torch.ones(2)})
    assert list(one) == ["input_ids", "label"]
