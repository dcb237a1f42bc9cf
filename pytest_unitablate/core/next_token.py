"""A causal language model as a classifier of its next token at one position.

A causal LM returns ``(N, T, V)`` logits; a check judges one position's.
:func:`next_token` wraps the model so that it returns ``(N, V)``: the logits at
``position``, an index (``-1``) or ``"last"``, the last position the batch's
``attention_mask`` keeps (:func:`~pytest_unitablate.core.tokens.pick_position`). Labels
are then target token ids. The wrapper is transparent to layer names: hooks go on the
model's own modules (:func:`~pytest_unitablate.core.layers.unwrap_model` unwraps it), and
a tokenizer-style batch is passed on as keyword arguments.

Example::

    >>> import torch
    >>> class Tiny(torch.nn.Module):
    ...     def forward(self, input_ids, attention_mask=None):
    ...         return torch.nn.functional.one_hot(input_ids, 5).float()
    >>> lm = next_token(Tiny(), "last")
    >>> lm(input_ids=torch.tensor([[1, 2, 0]]), attention_mask=torch.tensor([[1, 1, 0]]))
    tensor([[0., 0., 1., 0., 0.]])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pytest_unitablate.core.evaluation import select_logits
from pytest_unitablate.core.tokens import Position, check_position, pick_position
from pytest_unitablate.errors import DataError


class NextTokenLogits(nn.Module):
    """``model`` as a classifier of its next token at ``position`` (see the module).

    Layer names are the model's own: hooks resolve through ``wrapped_model``.
    """

    #: tells :func:`~pytest_unitablate.core.layers.unwrap_model` where the model is
    unitablate_wrapped = "wrapped_model"

    def __init__(self, model: nn.Module, position: Position,
                 output: int | str | None = None) -> None:
        super().__init__()
        self.wrapped_model = model
        self.position = check_position(position)
        self.output = output

    def extra_repr(self) -> str:
        """The position and output in the repr: a cache keyed by the model's structure
        keeps one entry per position."""
        return f"position={self.position!r}, output={self.output!r}"

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        logits = select_logits(self.wrapped_model(*args, **kwargs), self.output)
        if not isinstance(logits, torch.Tensor):
            raise DataError(f"the model returned {type(logits).__name__}, not logits")
        return pick_position(logits, self.position, kwargs.get("attention_mask"))


def next_token(model: nn.Module, position: Position = "last",
               output: int | str | None = None) -> NextTokenLogits:
    """``model`` returning the ``(N, V)`` next-token logits at ``position``, for every
    function of the core API (``evaluate``, ``scan``, ``ablate``): the labels are then
    target token ids. ``output`` picks the logits out of a ``ModelOutput`` first.

    Example::

        lm = next_token(GPT2LMHeadModel(config), position="last")
        scan(lm, prompts, "transformer.h.1.attn.c_proj", unit="head")
    """
    return NextTokenLogits(model, position, output)


__all__ = ["NextTokenLogits", "next_token"]
