"""Memory a computation needs: the peak of its live tensors, measured on any device.

``scan()`` sizes its suffix passes with this: it measures one pass on one example and one
unit, then stacks as many copies as the memory budget allows. The measure counts every
tensor that torch's operators create while ``fn`` runs and that is still alive, by storage
(views and in-place results of an operator's inputs add nothing), so it works the same on
CPU, where torch keeps no allocator statistics, and on CUDA. Tensors that existed before
(weights, the inputs) are not counted.

Example::

    >>> import torch
    >>> layer = torch.nn.Linear(1000, 1000)
    >>> with torch.no_grad():
    ...     need = peak_bytes(lambda: layer(torch.ones(4, 1000)).relu())
    >>> need == 2 * 4 * 1000 * 4   # two (4, 1000) float tensors alive at once, at most
    True
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Bytes a scan's stacked suffix passes may hold at once (2 GiB), beyond one plain batch."""


class _PeakTracker:
    """Counts live tensor storages created under it; ``peak`` is the largest sum seen."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self._refs: dict[int, int] = {}
        self._size: dict[int, int] = {}

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or tensor.device.type == "meta":
            return
        if key not in self._refs:
            self._refs[key] = 0
            self._size[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
        self._refs[key] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.current -= self._size.pop(key)


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensors that ``fn`` creates and holds at once (its result included).

    Raises ``RuntimeError`` if torch's dispatch-mode hook is unavailable.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    tracker = _PeakTracker()

    class _Mode(TorchDispatchMode):  # type: ignore[no-untyped-call]
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            inputs = {leaf.untyped_storage().data_ptr()
                      for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}
            for leaf in tree_leaves(out):  # views and in-place results of inputs are not new
                if isinstance(leaf, torch.Tensor) and \
                        leaf.untyped_storage().data_ptr() not in inputs:
                    tracker.track(leaf)
            return out

    with _Mode():  # type: ignore[no-untyped-call]
        result = fn()
    del result
    return tracker.peak


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; binary units, one decimal.

    >>> format_bytes(2 * 1024**3)
    '2.0 GiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
