"""Scans of a transformer's heads and MLP neurons: the scan engine against the naive loop,
with the limit a per-unit suffix method can reach, side by side in one run.

For each block of the demo ViT (``unitablate_demo``: 3 blocks, 4 heads, 32 MLP neurons)
and the test split repeated ``--repeat`` times (597 images each):

* heads (``unit: head``): ``scan(..., unit="head")`` (the network cut before the
  attention, one suffix pass per head; the naive loop where that is measured no cheaper)
  against ``method="naive"`` (one whole forward per head);
* neurons (``mlp.1``, ``channel_dim=-1``): ``scan(...)`` (the prefix engine: stacked
  ablated copies in the suffix) against ``method="naive"``.

``limit`` is the wall-time ratio a method that pays one suffix pass per unit and the
prefix once could reach at best: a whole forward over (prefix / units + suffix), with
the prefix and suffix times measured on the same data. Stacking several units per
suffix pass (neurons) can beat it; ablating heads one pass at a time cannot.

    python benchmarks/bench_transformer.py [--repeat 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pytest_unitablate import scan
from pytest_unitablate.core.evaluation import eval_mode
from pytest_unitablate.core.scan.heads import cut_before
from pytest_unitablate.core.scan.split import split_at
from unitablate_demo.data import load_split
from unitablate_demo.fixtures import vit


def _median(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), out


def _limit(model: torch.nn.Module, split: Any, data: list[Any], units: int,
           repeats: int) -> float:
    """whole forward / (prefix / units + suffix), medians over ``repeats`` passes."""
    with eval_mode(model), eval_mode(split.prefix), eval_mode(split.suffix):
        whole, _ = _median(lambda: [model(x) for x, _ in data], repeats)
        kept = [split.prefix(x) for x, _ in data]
        prefix, _ = _median(lambda: [split.prefix(x) for x, _ in data], repeats)
        suffix, _ = _median(lambda: [split.suffix(*k) for k in kept], repeats)
    return whole / (prefix / units + suffix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=4, help="copies of the test split")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = vit()
    x, y = load_split("test")
    x, y = x.repeat(args.repeat, 1, 1, 1), y.repeat(args.repeat)
    data = [(x[i:i + 256], y[i:i + 256]) for i in range(0, len(x), 256)]
    print(f"demo ViT, {len(x)} examples in batches of 256, {torch.get_num_threads()} "
          f"thread(s), medians of {args.repeats}")
    print(f"{'layer':42s} {'units':>5s} {'engine':>7s} {'naive':>7s} {'engine s':>9s} "
          f"{'ratio':>6s} {'limit':>6s}")
    for block in range(3):
        name = f"encoder.layers.encoder_layer_{block}"
        before = cut_before(model, f"{name}.self_attention")[0]
        cases = [(f"{name}.self_attention", {"unit": "head"}, 4,
                  split_at(model, before)[0] if before else None),
                 (f"{name}.mlp.1", {"channel_dim": -1}, 32,
                  split_at(model, f"{name}.mlp.1")[0])]
        for layer, kwargs, units, split in cases:
            def run(method: str, layer: str = layer, kwargs: dict[str, Any] = kwargs) -> Any:
                return scan(model, data, layer, method=method, progress=False, **kwargs)

            fast_s, fast = _median(lambda: run("auto"), args.repeats)
            naive_s, naive = _median(lambda: run("naive"), args.repeats)
            assert np.array_equal(fast.predictions, naive.predictions), layer
            limit = _limit(model, split, data, units, args.repeats) if split else float("nan")
            print(f"{layer:42s} {units:5d} {fast.method:>7s} {naive_s:7.3f} {fast_s:9.3f} "
                  f"{naive_s / fast_s:5.2f}x {limit:5.2f}x")


if __name__ == "__main__":
    main()
