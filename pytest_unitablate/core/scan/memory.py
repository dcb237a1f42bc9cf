"""Memory a traced computation needs: the peak of its live values, measured on any device.

``scan()`` sizes its suffix passes with this: it runs the suffix graph on one example with
one unit ablated, takes each node's output size, and replays the graph's order of
evaluation, freeing a value after its last use as the generated ``forward`` does. Views
and in-place results (an output that shares an input's storage) add nothing and keep that
input alive. A pass on ``u`` units and ``e`` examples holds about ``u * e`` times the
peak, so it works the same on CPU, where torch keeps no allocator statistics, and on
CUDA. Weights and buffers are not counted, nor are a leaf module's own temporaries.

Example::

    >>> import torch
    >>> from torch import fx, nn
    >>> net = fx.symbolic_trace(nn.Sequential(nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 2)))
    >>> graph_peak_bytes(net, torch.ones(1, 10))   # input + hidden, then hidden + relu
    800
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Bytes a scan's stacked suffix passes may hold at once (2 GiB), beyond one plain batch."""


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def graph_peak_bytes(module: fx.GraphModule, *args: Any) -> int:
    """Peak bytes of the values ``module``'s graph holds at once when run on ``args``
    (the arguments included, as they are alive while it runs)."""
    sizes: dict[fx.Node, int] = {}
    storages: dict[fx.Node, set[int]] = {}
    owner: dict[fx.Node, fx.Node] = {}  # a view's or in-place result's storage owner

    class _Sizes(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            out = super().run_node(node)
            tensors = _tensors(out)
            ptrs = {t.untyped_storage().data_ptr() for t in tensors}
            storages[node] = ptrs
            shared = [n for n in node.all_input_nodes if storages[n] & ptrs]
            if shared:
                owner[node] = owner.get(shared[0], shared[0])
                sizes[node] = 0
            else:
                sizes[node] = sum(t.untyped_storage().nbytes() for t in tensors)
            return out

    with torch.no_grad():
        _Sizes(module).run(*args)
    nodes = list(module.graph.nodes)
    last: dict[fx.Node, int] = {}
    for index, node in enumerate(nodes):
        for used in node.all_input_nodes:
            last[owner.get(used, used)] = index  # a view keeps its storage's owner alive
    live = peak = 0
    for index, node in enumerate(nodes):
        live += sizes[node]
        peak = max(peak, live)
        for used in {owner.get(n, n) for n in node.all_input_nodes}:
            if last[used] == index:
                live -= sizes[used]
    return peak


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; binary units, one decimal.

    >>> format_bytes(2 * 1024**3)
    '2.0 GiB'
    """
    unit = "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            break
        n, unit = n / 1024, bigger
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
