"""``next_token``: a causal LM as a classifier of its next token, read at one position."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_unitablate.core.layers import unwrap_model
from pytest_unitablate.core.next_token import NextTokenLogits, next_token
from pytest_unitablate.core.tokens import PositionError
from pytest_unitablate.errors import DataError


class Tiny(nn.Module):
    """One-hot "logits" of each input token; a dict output when asked."""

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.lm_head = nn.Identity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> object:
        logits = self.lm_head(nn.functional.one_hot(input_ids, 5).float())
        return {"logits": logits, "hidden": input_ids} if self.as_dict else logits


IDS = torch.tensor([[1, 2, 3], [4, 0, 0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_the_default_position_is_the_last_one_the_mask_keeps() -> None:
    lm = next_token(Tiny())
    assert isinstance(lm, NextTokenLogits) and lm.position == "last" and lm.output is None
    assert lm(input_ids=IDS, attention_mask=MASK).argmax(1).tolist() == [3, 4]
    assert lm(input_ids=IDS).argmax(1).tolist() == [3, 0]  # no mask: the last position
    assert next_token(Tiny(), 0)(IDS).argmax(1).tolist() == [1, 4]  # positional input too
    assert "position='last', output=None" in repr(lm)
    assert unwrap_model(lm).__class__ is Tiny


def test_output_picks_the_logits_out_of_a_mapping_and_anything_else_is_refused() -> None:
    lm = next_token(Tiny(as_dict=True), -1, output="logits")
    assert lm(input_ids=IDS, attention_mask=MASK).argmax(1).tolist() == [3, 0]
    assert "output='logits'" in repr(lm)
    assert next_token(Tiny(as_dict=True))(input_ids=IDS).argmax(1).tolist() == [3, 0]

    class Words(nn.Module):
        def forward(self, input_ids: torch.Tensor) -> list[str]:
            return ["a reply"]

    with pytest.raises(DataError, match=r"^the model returned str, not logits$"):
        next_token(Words())(input_ids=IDS)
    with pytest.raises(PositionError, match=r"^position: last needs \(N, T, V\)"):
        next_token(Tiny(as_dict=True), output="hidden")(input_ids=IDS)


def test_a_scan_through_the_engines_prefix_cache_says_the_view_runs_whole() -> None:
    """The engine's scans (with a prefix cache) do not try to cut a next-token view: its
    position is picked after the whole forward. The reason says so first (the engine
    that ran instead is measured, so only the start is fixed)."""
    from pytest_unitablate.core.scan import scan
    from pytest_unitablate.core.scan.prefix import PrefixCache

    class Embedded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.emb, self.act, self.head = nn.Embedding(5, 8), nn.ReLU(), nn.Linear(8, 5)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.emb(input_ids)))  # type: ignore[no-any-return]

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5, (12, 4), generator=g)
    labels = torch.randint(0, 5, (12,), generator=g)
    result = scan(next_token(Embedded().eval()), (ids, labels), "act", units=[0, 1, 2, 3],
                  channel_dim=-1, prefix_cache=PrefixCache(), progress=False)
    assert result.reason.startswith(
        "a next-token view of a language model runs its forward whole"), result.reason
