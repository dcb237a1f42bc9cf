"""Language-model inputs and outputs: tokenizer-style batches and next-token logits.

* A **token batch** is a dict of tensors that share their first (batch) dimension, what a
  Hugging Face tokenizer returns (``input_ids``, ``attention_mask``, ...). A data batch may
  be such a dict with the labels under ``labels``, or a pair ``(dict, labels)``. It becomes
  a :class:`TokenBatch`, which slices, indexes and moves like a tensor, and the model is
  called as ``model(**batch)`` (:func:`call_model`). Padded batches of different lengths
  are fine.
* **Next-token logits**: a causal LM returns ``(N, T, V)`` logits; a check judges one
  position's: :func:`pick_position` takes an index (``-1``) or ``"last"``, the last
  position the batch's ``attention_mask`` keeps (the last position when there is no
  mask). :func:`pytest_unitablate.core.next_token.next_token` wraps a model so.

Example::

    >>> import torch
    >>> batch = TokenBatch({"input_ids": torch.tensor([[5, 6, 0], [7, 8, 9]]),
    ...                     "attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])})
    >>> batch.shape[0], batch[1:]["input_ids"].tolist()
    (2, [[7, 8, 9]])
    >>> logits = torch.arange(2 * 3 * 4.0).view(2, 3, 4)
    >>> pick_position(logits, "last", batch["attention_mask"])[:, 0].tolist()
    [4.0, 20.0]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from pytest_unitablate.errors import ConfigError, DataError, PositionError

#: The key a dict batch keeps its labels under.
LABELS_KEY = "labels"

Position = int | str


class TokenBatch(Mapping[str, torch.Tensor]):
    """A dict of tensors with one batch dimension, sliced and moved as one."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._tensors = dict(tensors)

    @staticmethod
    def checked(where: str, value: Mapping[Any, Any]) -> TokenBatch:
        """A :class:`TokenBatch` from a mapping, or a :class:`DataError` naming ``where``."""
        if not value:
            raise DataError(f"{where}: the inputs are an empty dict")
        sizes = {}
        for key, tensor in value.items():
            if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
                raise DataError(f"{where}: the inputs dict maps {key!r} to a "
                                f"{type(tensor).__name__}; every value must be a tensor")
            if tensor.dim() == 0:
                raise DataError(f"{where}: inputs[{key!r}] is a scalar; expected a batch")
            sizes[key] = int(tensor.shape[0])
        if len(set(sizes.values())) > 1:
            raise DataError(f"{where}: the inputs' tensors hold different numbers of "
                            f"examples ({sizes})")
        return TokenBatch(value)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._tensors[key]
        return TokenBatch({k: v[key] for k, v in self._tensors.items()})

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    @property
    def main(self) -> torch.Tensor:
        """``input_ids`` if there, else the first tensor."""
        return self._tensors.get("input_ids", next(iter(self._tensors.values())))

    @property
    def shape(self) -> torch.Size:
        """The main tensor's shape (``shape[0]`` is the batch)."""
        return self.main.shape

    def dim(self) -> int:
        return self.main.dim()

    def to(self, *args: Any, **kwargs: Any) -> TokenBatch:
        return TokenBatch({k: v.to(*args, **kwargs) for k, v in self._tensors.items()})

    def detach(self) -> TokenBatch:
        return TokenBatch({k: v.detach() for k, v in self._tensors.items()})

    def clone(self) -> TokenBatch:
        return TokenBatch({k: v.clone() for k, v in self._tensors.items()})

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self._tensors.items())
        return f"TokenBatch({parts})"


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a :class:`TokenBatch`, else ``model(inputs)``."""
    if isinstance(inputs, TokenBatch):
        return model(**inputs)
    return model(inputs)


def check_position(position: Any) -> Position:
    """``position`` as given, or a :class:`ConfigError`: an int or ``"last"``."""
    if isinstance(position, bool) or not (isinstance(position, int) or position == "last"):
        raise ConfigError(f"position must be an index (e.g. -1) or 'last', got {position!r}")
    return position  # type: ignore[no-any-return]


def pick_position(logits: torch.Tensor, position: Position,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The ``(N, V)`` logits at ``position`` of ``(N, T, V)`` logits: an index, or
    ``"last"``, each example's last position its ``attention_mask`` keeps (right or left
    padding), the last position when there is no mask."""
    if logits.dim() != 3:
        raise PositionError(f"position: {position} needs (N, T, V) next-token logits; the model "
                        f"returned logits of shape {tuple(logits.shape)}")
    n, t, _ = logits.shape
    if position == "last":
        if attention_mask is None:
            return logits[:, -1]
        mask = attention_mask.to(logits.device)
        if tuple(mask.shape) != (n, t):
            raise PositionError(f"position: last: the attention_mask has shape "
                            f"{tuple(mask.shape)}, the logits {tuple(logits.shape)}")
        kept = mask != 0
        if not bool(kept.any(dim=1).all()):
            raise PositionError("position: last: an example's attention_mask keeps no position")
        steps = torch.arange(t, device=logits.device).expand(n, t)
        last = torch.where(kept, steps, torch.full_like(steps, -1)).max(dim=1).values
        return logits[torch.arange(n, device=logits.device), last]
    assert isinstance(position, int)
    if not -t <= position < t:
        raise PositionError(f"position: {position} is outside the {t} positions of the logits")
    return logits[:, position]


__all__ = ["LABELS_KEY", "TokenBatch", "call_model", "check_position", "pick_position"]
