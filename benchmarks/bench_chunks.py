"""Measured pass sizes against the old constant and the naive loop, layer by layer.

For each layer: seconds per unit of
  * naive   — one full forward over the data per unit, with the ablation hook;
  * fixed16 — ``scan(chunk_size=16)``, the constant the prefix engine used before it
              measured (it still runs the entry convolutions once per batch);
  * auto    — ``scan()`` as shipped: units per pass timed on the first batch, the naive
              loop where that measured faster;
interleaved ``--repeats`` times in one run, medians compared. Target (issue 13): no layer
slower than the naive loop (``naive/auto >= 1`` within the noise of a shared machine).

    python benchmarks/bench_chunks.py [--repeats 2] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import batches, digits32, time_naive

from pytest_unitablate import scan


def time_scan(model: nn.Module, data: Any, layer: str, chunk: int | None) -> tuple[float, str]:
    start = time.perf_counter()
    result = scan(model, data, layer, chunk_size=chunk, progress=False)
    per_unit = (time.perf_counter() - start) / len(result.units)
    what = result.method + (f" {result.plan.split(' per ')[0]}" if result.plan else "")
    return per_unit, what


def cases(device: str) -> list[tuple[str, nn.Module, Any, str]]:
    import torchvision

    from unitablate_demo.fixtures import checkpoint, test_data

    torch.manual_seed(0)
    x, y = digits32()
    data = batches(x.to(device), y.to(device))
    resnet18 = torchvision.models.resnet18(weights=None, num_classes=10).eval().to(device)
    vgg = torchvision.models.vgg11_bn(weights=None, num_classes=10).eval().to(device)
    mobile = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10).eval()
    out: list[tuple[str, nn.Module, Any, str]] = [
        ("resnet18", resnet18, data, layer) for layer in ("layer1", "layer2", "layer3")]
    out += [("vgg11_bn", vgg, data, "features.10"),
            ("mobilenet_v3_small", mobile.to(device), data, "features.4")]
    demo = test_data()
    out += [("demo resnet", checkpoint("resnet"), demo, layer)
            for layer in ("layer1.0", "layer2.1", "layer3.0")]
    out += [("demo alexnet", checkpoint("alexnet"), demo, layer) for layer in ("conv2", "conv5")]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {opts.device}")
    print()
    print("| model | layer | naive s/unit | fixed16 s/unit | auto s/unit | auto engine, pass "
          "| naive/auto | fixed16/auto |")
    print("|---|---|---:|---:|---:|---|---:|---:|")
    worst = float("inf")
    for name, model, data, layer in cases(opts.device):
        naive, fixed, auto = [], [], []
        what = ""
        for _ in range(opts.repeats):
            naive.append(time_naive(model, data, layer, [0, 1, 2]))
            fixed.append(time_scan(model, data, layer, 16)[0])
            seconds, what = time_scan(model, data, layer, None)
            auto.append(seconds)
        n, f, a = (statistics.median(v) for v in (naive, fixed, auto))
        worst = min(worst, n / a)
        print(f"| {name} | {layer} | {n:.4f} | {f:.4f} | {a:.4f} | {what} | {n / a:.2f}x | "
              f"{f / a:.2f}x |")
    print()
    print(f"slowest layer against the naive loop: {worst:.2f}x (target >= 1)")


if __name__ == "__main__":
    main()
