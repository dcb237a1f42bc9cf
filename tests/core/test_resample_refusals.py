"""Resample ablation's draw rule at its edges and its refusals, each with its message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pytest_unitablate.core.resample import (
    ResampleSource,
    batch_first,
    check_batch_first,
    layer_values,
    resample_index,
)
from pytest_unitablate.errors import ConfigError, UnsupportedModelError


def test_the_fewest_reference_examples_each_kind_of_draw_takes() -> None:
    with pytest.raises(ConfigError, match=r"^resample ablation needs at least 2 reference "
                                          r"example\(s\), got 1$"):
        resample_index(3, 1, draw=0, seed=0, same_data=True)
    with pytest.raises(ConfigError, match=r"^resample ablation needs at least 1 reference "
                                          r"example\(s\), got 0$"):
        resample_index(3, 0, draw=0, seed=0, same_data=False)
    # the fewest that work: two examples take each other; one reference serves all
    assert resample_index(2, 2, draw=0, seed=0, same_data=True).tolist() == [1, 0]
    assert resample_index(4, 1, draw=3, seed=9, same_data=False).tolist() == [0, 0, 0, 0]


def test_every_reference_example_can_be_drawn_and_never_the_example_itself() -> None:
    for same in (True, False):
        seen = set()
        for draw in range(40):
            j = resample_index(6, 6, draw=draw, seed=1, same_data=same)
            assert j.dtype == np.int64 and j.min() >= 0 and j.max() <= 5
            if same:
                assert not np.any(j == np.arange(6))
            seen |= set(j.tolist())
        assert seen == set(range(6)), same  # the last example too


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.quiet = nn.Identity()
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(x))  # type: ignore[no-any-return]


class NoTensor(nn.Module):
    def forward(self, x: torch.Tensor) -> list[int]:
        return [1]


def test_layer_values_refuse_a_layer_that_never_ran_or_gives_no_tensor() -> None:
    net = Net()
    data = [(torch.randn(3, 3), torch.zeros(3, dtype=torch.long))] * 2
    values = layer_values(net, data, "fc")
    assert values.shape == (6, 4) and values.device.type == "cpu"
    assert torch.equal(values[:3], net.fc(data[0][0]).detach())
    with pytest.raises(UnsupportedModelError,
                       match=r"^layer 'quiet' never ran on the reference data$"):
        layer_values(net, data, "quiet", device="cpu")
    net.quiet = NoTensor()  # type: ignore[assignment]
    net.forward = lambda x: net.quiet(x)  # type: ignore[method-assign]
    with pytest.raises(UnsupportedModelError, match=r"^layer 'quiet' returns no tensor$"):
        layer_values(net, data, "quiet")


def test_an_output_of_another_shape_per_example_is_refused_with_both_shapes() -> None:
    values = torch.zeros(10, 5, 4)
    check_batch_first("blocks.0", values, 3, torch.zeros(3, 5, 4))  # fits
    message = ("resample ablation of 'blocks.0': the reference examples give it an output "
               "of shape (5, 4) per example, this batch {}; the layer's output must be "
               "batch-first with the same shape on every example (pad sequences to one "
               "length)")
    for batch, tensor in ((3, torch.zeros(3, 6, 4)), (3, torch.zeros(5, 3, 4))):
        with pytest.raises(UnsupportedModelError) as err:
            check_batch_first("blocks.0", values, batch, tensor)
        assert str(err.value) == message.format(tuple(tensor.shape))


def test_a_source_wraps_after_a_whole_pass_and_refuses_more_examples_than_drawn() -> None:
    source = ResampleSource(torch.arange(4.0).reshape(4, 1), np.array([3, 2, 1, 0]))
    like = torch.zeros(2, 1, dtype=torch.float64)
    assert source.take(2, "l", like).flatten().tolist() == [3.0, 2.0]
    assert source.take(2, "l", like).dtype == torch.float64
    assert source.take(2, "l", like).flatten().tolist() == [3.0, 2.0]  # the next pass
    source.take(1, "l", like)
    with pytest.raises(UnsupportedModelError, match=r"^resample ablation of 'l': the data "
                                                    r"gave more than the 4 examples the "
                                                    r"draw was made for$"):
        source.take(2, "l", like)


def test_batch_first_turns_only_a_multihead_attentions_sequence_first_heads() -> None:
    x = torch.zeros(7, 2, 8)
    assert batch_first("mha", x).shape == (2, 7, 8)
    assert batch_first("projection", x).shape == (7, 2, 8)
    assert batch_first("mha", torch.zeros(2, 8)).shape == (2, 8)
