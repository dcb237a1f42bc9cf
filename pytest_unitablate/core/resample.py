"""Resample ablation: a unit takes, on each example, its value on another example.

Zero and mean ablation replace a unit by one value on every example, which can put the
network off the distribution it was trained on. **Resample ablation** replaces the units'
values on evaluation example ``i`` by their values on reference example ``j(i)``: the
unit then behaves as it does on real data, only uninformatively (as in the causal
scrubbing and IOI work). The reference data is the one a spec declares with
``reference:``, or the evaluation data itself.

The draw ``j`` is one documented rule, the same in every engine, process and run:

* ``rng = numpy.random.Generator(numpy.random.PCG64([seed, draw]))`` with the run's seed
  (``--unitablate-seed``, default 0) and the draw's number ``0 .. K-1``;
* with a declared reference set of ``R`` examples, ``j = rng.integers(0, R, size=N)``;
* with the evaluation data as its own reference (``R = N``), ``j = rng.integers(0, N - 1,
  size=N)``, then ``j += (j >= i)``: never the example itself.

``{resample: {draws: K}}`` repeats the ablated pass with draws ``0 .. K-1`` and averages
the per-example measures (correctness and log-probability) over them.

Example::

    >>> resample_index(5, 5, draw=0, seed=0, same_data=True).tolist()
    [4, 3, 3, 1, 1]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pytest_unitablate.core.tokens import call_model
from pytest_unitablate.errors import ConfigError, UnsupportedModelError


def resample_index(n: int, reference: int, *, draw: int, seed: int, same_data: bool
                   ) -> npt.NDArray[np.int64]:
    """The reference example each of ``n`` evaluation examples takes (module docstring)."""
    if reference < (2 if same_data else 1):
        raise ConfigError(f"resample ablation needs at least {2 if same_data else 1} "
                          f"reference example(s), got {reference}")
    rng = np.random.Generator(np.random.PCG64([int(seed), int(draw)]))
    if same_data:
        j = rng.integers(0, reference - 1, size=n)
        j = j + (j >= np.arange(n))
    else:
        j = rng.integers(0, reference, size=n)
    out: npt.NDArray[np.int64] = j.astype(np.int64)
    return out


@dataclass
class ResampleSource:
    """The per-example replacement of one layer: ``values[r]`` is the layer's output (a
    channel layer) or its heads' concatenated output (a head site) on reference example
    ``r``, batch dimension first; ``index[i]`` is the reference example evaluation example
    ``i`` takes. Batches come in data order; ``offset`` counts the examples seen and
    wraps after ``len(index)`` (one pass over the data after another)."""

    values: torch.Tensor
    index: npt.NDArray[np.int64]
    offset: int = field(default=0)

    def take(self, batch: int, layer: str, like: torch.Tensor) -> torch.Tensor:
        """The replacement rows of the next ``batch`` examples, as ``like``'s dtype and
        device, and move on."""
        n = len(self.index)
        if self.offset + batch > n:
            if self.offset % n == 0:
                self.offset = 0
            else:
                raise UnsupportedModelError(
                    f"resample ablation of {layer!r}: the data gave more than the "
                    f"{n} examples the draw was made for")
        rows = torch.as_tensor(self.index[self.offset:self.offset + batch])
        self.offset += batch
        return self.values[rows].to(dtype=like.dtype, device=like.device)


def layer_values(model: nn.Module, data: Any, layer: str, *,
                 device: torch.device | str | None = None,
                 capture: Callable[..., Any] | None = None) -> torch.Tensor:
    """The output of ``layer`` on every example of ``data`` (CPU, batch dimension first),
    or with ``capture`` (a head site) what ``capture`` collects."""
    from pytest_unitablate.core.data import iter_batches
    from pytest_unitablate.core.evaluation import eval_mode, model_device
    from pytest_unitablate.core.layers import first_tensor, resolve_layer

    parts: list[torch.Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        tensor = first_tensor(output)
        if tensor is None:
            raise UnsupportedModelError(f"layer {layer!r} returns no tensor")
        parts.append(tensor.detach().cpu())

    target = torch.device(device) if device is not None else model_device(model)
    handle = resolve_layer(model, layer).register_forward_hook(hook)
    try:
        with eval_mode(model):
            for inputs, _ in iter_batches(data, device=target):
                call_model(model, inputs)
    finally:
        handle.remove()
    if not parts:
        raise UnsupportedModelError(f"layer {layer!r} never ran on the reference data")
    return torch.cat(parts)


def check_batch_first(layer: str, values: torch.Tensor, batch: int, tensor: torch.Tensor,
                      ) -> None:
    """Refuse a layer output whose per-example shape differs from the reference's (another
    token count, or an output that is not batch-first)."""
    if tuple(tensor.shape[1:]) != tuple(values.shape[1:]) or tensor.shape[0] != batch:
        raise UnsupportedModelError(
            f"resample ablation of {layer!r}: the reference examples give it an output of "
            f"shape {tuple(values.shape[1:])} per example, this batch "
            f"{tuple(tensor.shape)}; the layer's output must be batch-first with the same "
            f"shape on every example (pad sequences to one length)")


def batch_first(kind: str, x: torch.Tensor) -> torch.Tensor:
    """A head site's concatenated heads with the batch first: ``nn.MultiheadAttention``
    gives them as (T, N, E), an output projection or a hook point as (N, ..., E)."""
    return x.transpose(0, 1) if kind == "mha" and x.dim() == 3 else x


__all__ = ["ResampleSource", "batch_first", "check_batch_first", "layer_values",
           "resample_index"]
