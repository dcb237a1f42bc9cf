"""``remembered``: a split (or any traced part) of a layer is worked out once per model,
layer and way of working it out, and again only when the model's modules or tensors
become other objects."""

from __future__ import annotations

import types

import torch
from torch import nn

from pytest_unitablate.core.scan.split import remembered


def _counting(module: str = __name__) -> tuple[list[str], types.FunctionType]:
    calls: list[str] = []

    def how(model: nn.Module, layer: str) -> str:
        calls.append(layer)
        return f"{layer} of {len(list(model.modules()))} modules"

    how.__module__ = module
    return calls, how  # type: ignore[return-value]


def test_worked_out_once_per_model_and_layer() -> None:
    calls, how = _counting()
    model, other = nn.Sequential(nn.Linear(2, 2)), nn.Sequential(nn.Linear(2, 2))
    assert remembered(model, "0", how) == "0 of 2 modules"
    assert remembered(model, "0", how) == "0 of 2 modules"
    assert calls == ["0"]
    remembered(model, "1", how)
    remembered(other, "0", how)
    assert calls == ["0", "1", "0"]
    remembered(model, "1", how)
    remembered(other, "0", how)
    assert calls == ["0", "1", "0"]


def test_two_ways_of_the_same_name_in_other_modules_are_not_confused() -> None:
    calls_a, how_a = _counting("package.a")
    calls_b, how_b = _counting("package.b")
    assert how_a.__qualname__ == how_b.__qualname__
    model = nn.Sequential(nn.Linear(2, 2))
    remembered(model, "0", how_a)
    remembered(model, "0", how_b)
    assert (calls_a, calls_b) == (["0"], ["0"])


def test_worked_out_again_when_a_module_or_tensor_is_replaced() -> None:
    calls, how = _counting()
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    assert remembered(model, "0", how) == "0 of 3 modules"
    model[1] = nn.ReLU()  # another module object under the same name
    remembered(model, "0", how)
    assert calls == ["0", "0"]
    model[1] = nn.Sequential(nn.ReLU())  # another tree
    assert remembered(model, "0", how) == "0 of 4 modules"
    model[0].weight = nn.Parameter(model[0].weight.detach().clone())  # another tensor
    remembered(model, "0", how)
    with torch.no_grad():
        model[0].weight.mul_(2)  # the same tensor, changed in place: the split still holds
    remembered(model, "0", how)
    assert calls == ["0", "0", "0", "0"]
