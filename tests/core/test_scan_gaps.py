"""scan() paths the property test does not reach on its own: each engine's baseline per
batch, the fallbacks when a fast engine fails its first-batch verification, and channel
means of the wrong length."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pytest_unitablate import ablate, evaluate, scan
from pytest_unitablate.errors import ConfigError


class Net(nn.Module):
    """conv -> relu -> conv -> GAP -> flatten -> fc; ``couple`` subtracts the batch mean
    after ``conv2`` (examples are no longer independent, so stacking ablated copies along
    the batch changes the result)."""

    def __init__(self, couple: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6, 4)
        self.couple = couple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.relu(self.conv1(x)))
        if self.couple:
            h = h - h.mean(0, keepdim=True)
        return self.fc(self.flat(self.pool(torch.relu(h))))


def _data(n: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


class Head(nn.Module):
    """conv -> GAP -> flatten -> fc: the closed form applies."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


def _naive(model: nn.Module, data: Any, layer: str, batch_size: int,
           units: Any = range(6)) -> np.ndarray:
    rows = []
    for unit in units:
        with ablate(model, {layer: [unit]}):
            rows.append(evaluate(model, data, batch_size=batch_size).predictions)
    return np.stack(rows)


@pytest.mark.parametrize(("layer", "method"), [("conv2", "prefix"), ("conv1", "prefix"),
                                               ("conv2", "naive"), ("fc", "naive")])
def test_every_engine_pairs_each_batch_with_its_own_baseline(layer: str, method: str) -> None:
    """Five batches of different examples: a baseline taken from the wrong batch shows."""
    torch.manual_seed(0)
    model = Net().eval()
    data = _data()
    result = scan(model, data, layer, method=method, batch_size=5, chunk_size=4)
    assert result.baseline.predictions.tolist() == \
        evaluate(model, data).predictions.tolist()
    assert np.array_equal(result.predictions, _naive(model, data, layer, 5, result.units))


def test_closed_form_baseline_is_per_batch() -> None:
    torch.manual_seed(0)
    model = Head().eval()
    data = _data()
    result = scan(model, data, "conv", batch_size=5)
    assert result.method == "closed_form"
    assert result.baseline.predictions.tolist() == evaluate(model, data).predictions.tolist()
    assert np.array_equal(result.predictions, _naive(model, data, "conv", 5))


def test_closed_form_that_fails_verification_falls_back_to_prefix_and_says_why() -> None:
    """A forward hook on the head makes it non-affine; fx cannot see hooks, the check can."""
    torch.manual_seed(0)
    model = Head().eval()
    model.fc.register_forward_hook(lambda m, a, o: o ** 2)
    data = _data()
    result = scan(model, data, "conv", batch_size=8, chunk_size=6)
    assert result.method == "prefix"
    assert "closed form did not match a real ablated forward" in result.reason
    assert np.array_equal(result.predictions, _naive(model, data, "conv", 8))
    with pytest.raises(ConfigError, match=r"closed_form.*refused.*did not match"):
        scan(model, data, "conv", method="closed_form")


def test_prefix_that_fails_verification_falls_back_to_naive_and_says_why() -> None:
    """A batch-coupled model: stacked ablated copies would share one batch mean."""
    torch.manual_seed(0)
    model = Net(couple=True).eval()
    data = _data()
    result = scan(model, data, "conv1", batch_size=8, chunk_size=3)
    assert result.method == "naive"
    assert "split network did not match a real ablated forward on the first batch" \
        in result.reason, result.reason
    assert np.array_equal(result.predictions, _naive(model, data, "conv1", 8))
    with pytest.raises(ConfigError, match=r"prefix.*refused.*did not match"):
        scan(model, data, "conv1", method="prefix")


@pytest.mark.parametrize("method", ["closed_form", "prefix", "naive"])
@pytest.mark.parametrize("length", [5, 7])
def test_means_of_the_wrong_length_are_refused_by_every_engine(method: str, length: int) -> None:
    torch.manual_seed(0)
    model: nn.Module = Net().eval() if method != "closed_form" else Head().eval()
    layer = "conv2" if method != "closed_form" else "conv"
    means = {layer: torch.zeros(length)}
    with pytest.raises(ConfigError, match=rf"means for layer '{layer}' have {length} values.*"
                                          r"has 6 channels"):
        scan(model, _data(), layer, ablation="mean", means=means, method=method)
    with pytest.raises(ConfigError, match=rf"have {length} values"), \
            ablate(model, {layer: [0]}, ablation="mean", means=means):
        model(_data()[0])


def test_units_from_numpy_are_taken_and_bad_units_refused_up_front() -> None:
    """A stranger's ``np.argsort`` output used to fail deep inside ``ablate``; a unit past
    the layer's channels was a bare IndexError, and a negative one claimed 0 channels."""
    from pytest_unitablate.errors import UnitOutOfRangeError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 5, 3), nn.ReLU(), nn.Conv2d(5, 6, 3),
                          nn.Flatten(), nn.LazyLinear(3)).eval()
    data = (torch.randn(10, 1, 7, 7), torch.randint(0, 3, (10,)))
    model(data[0])  # materialise the lazy layer
    order = np.argsort(np.array([0.3, 0.1, 0.9, 0.2, 0.5]))
    by_numpy = scan(model, data, "1", units=order[:3], progress=False)
    by_list = scan(model, data, "1", units=[int(u) for u in order[:3]], progress=False)
    assert by_numpy.units == by_list.units == (1, 3, 0)
    assert np.array_equal(by_numpy.predictions, by_list.predictions)
    for bad, message in (([5], r"whose output \(N, \[5\], 5, 5\) has 5 units"),
                         ([-1], r"\(N, \[5\], 5, 5\) has 5 units along dimension 1")):
        with pytest.raises(UnitOutOfRangeError, match=message):
            scan(model, data, "1", units=bad, progress=False)
    with pytest.raises(TypeError, match=r"must be integers, got 1\.5"):
        scan(model, data, "1", units=[1.5], progress=False)
    with pytest.raises(UnitOutOfRangeError, match="is negative: units are 0-based"), \
            ablate(model, {"1": [-2]}):
        pass


@pytest.mark.parametrize(("value", "units"), [
    (5, (5,)), (np.int64(2), (2,)), (torch.tensor(4), (4,)),  # a 0-d argmax is one unit
    (np.array([3, 1]), (3, 1)), (torch.tensor([1, 2]), (1, 2)), ([np.int32(1), 2], (1, 2)),
    ((), ()),
])
def test_unit_indices_take_ints_numpy_and_torch_integers(value: object,
                                                         units: tuple[int, ...]) -> None:
    from pytest_unitablate.core.layers import unit_indices

    got = unit_indices("conv5", value)
    assert got == units and all(type(u) is int for u in got)


@pytest.mark.parametrize("value", [1.0, True, [True], [1, 2.5], np.float32(1), "3",
                                   torch.tensor(1.0)])
def test_unit_indices_refuse_what_is_not_an_integer_by_name(value: object) -> None:
    from pytest_unitablate.core.layers import unit_indices

    with pytest.raises(TypeError, match=r"^units of layer 'conv5' must be integers, got "):
        unit_indices("conv5", value)


def test_a_boolean_mask_given_as_units_is_refused_not_read_as_units_0_and_1() -> None:
    from pytest_unitablate.core.layers import unit_indices

    for mask in (torch.tensor([True, False, True]), torch.tensor(True)):
        with pytest.raises(TypeError) as raised:
            unit_indices("conv5", mask)
        assert str(raised.value) == (
            "units of layer 'conv5' must be integers, got a boolean tensor (a mask? give its "
            "indices: mask.nonzero().flatten())")
    assert unit_indices("conv5", torch.tensor([True, False, True]).nonzero().flatten()) == (
        0, 2)


def test_scan_takes_units_as_a_tensor_like_a_list_and_refuses_a_mask() -> None:
    """``scan(units=...)`` given a 1-d tensor names its rows by ints, as for a list (not
    one-unit groups); a 0-d tensor is one unit; a boolean mask is refused by name."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 5, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)).eval()
    data = (torch.randn(10, 1, 7, 7), torch.randint(0, 3, (10,)))
    model(data[0])  # materialise the lazy layer
    by_tensor = scan(model, data, "1", units=torch.tensor([3, 1]), progress=False)
    by_list = scan(model, data, "1", units=[3, 1], progress=False)
    assert by_tensor.units == by_list.units == (3, 1)
    assert np.array_equal(by_tensor.predictions, by_list.predictions)
    assert scan(model, data, "1", units=torch.tensor(3), progress=False).units == (3,)
    for mask, got in ((torch.tensor([True, False, True, False, False]), "a boolean tensor"),
                      ([torch.tensor(True), torch.tensor(False)], "tensor(True)")):
        with pytest.raises(TypeError, match=rf"^units of layer '1' must be integers, got "
                                            rf"{re.escape(got)}"):
            scan(model, data, "1", units=mask, progress=False)
