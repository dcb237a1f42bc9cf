"""``graph_peak_bytes`` on graphs built node by node, where each liveness rule decides the
answer: a view of a view keeps the first storage alive, a value used again after a later
allocation stays counted, and a node that returns a dict of tensors owns them.

Every input is a (1, 1000) float32 tensor: 4,000 bytes per full-size value."""

from __future__ import annotations

import operator

import torch
from torch import fx

from pytest_unitablate.core.scan.memory import graph_peak_bytes

X = torch.randn(1, 1000)
FULL = 4000


def _module(graph: fx.Graph) -> fx.GraphModule:
    graph.lint()
    return fx.GraphModule(torch.nn.Module(), graph)


def test_a_view_of_a_view_keeps_the_first_storage_alive_until_its_last_use() -> None:
    g = fx.Graph()
    x = g.placeholder("x")
    a = g.call_function(torch.mul, (x, 2))  # new: x + a
    b = g.call_method("view", (a, 10, 100))  # a view of a
    c = g.call_method("view", (b, 1000))  # a view of the view: still a's storage
    d = g.call_function(torch.add, (x, 1))  # new: x + a + d, then x dies
    e = g.call_function(torch.add, (c, d))  # new: a + d + e
    g.output(e)
    # a lives until e reads it through c; taking b for c's owner would free a at c
    assert graph_peak_bytes(_module(g), X) == 3 * FULL


def test_a_value_read_again_later_stays_counted_until_then() -> None:
    g = fx.Graph()
    x = g.placeholder("x")
    a = g.call_function(torch.mul, (x, 2))  # x + a
    b = g.call_function(torch.mul, (a, 3))  # x + a + b
    c = g.call_function(torch.add, (b, 1))  # x + a + c, b dies
    d = g.call_function(torch.add, (c, x))  # x + a + d, then x and c die
    e = g.call_function(torch.add, (d, a))  # a + d + e
    g.output(e)
    assert graph_peak_bytes(_module(g), X) == 4 * FULL


def _two(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"a": x * 2, "b": x * 3}


def test_a_dict_output_owns_its_tensors_while_one_of_them_is_read() -> None:
    g = fx.Graph()
    x = g.placeholder("x")
    pair = g.call_function(_two, (x,))  # x + two new values, then x dies
    a = g.call_function(operator.getitem, (pair, "a"))  # a view into the dict: nothing new
    out = g.call_function(torch.add, (a, 1))  # the dict (both values) + out
    g.output(out)
    assert graph_peak_bytes(_module(g), X) == 3 * FULL


def test_the_arguments_count_while_they_are_read() -> None:
    g = fx.Graph()
    x = g.placeholder("x")
    y = g.placeholder("y")
    s = g.call_function(torch.add, (x, y))  # x + y + s, then x and y die
    t = g.call_function(torch.mul, (s, 2))  # s + t
    g.output(t)
    assert graph_peak_bytes(_module(g), X, X.clone()) == 3 * FULL
