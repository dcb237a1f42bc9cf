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
