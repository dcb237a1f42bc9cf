"""What matching a layer costs (identity: signature), against the plain evaluation pass.

Matching needs the class-damage profiles of one layer of the model under test: one forward
and one backward pass over the evaluation data (``core.identity.damage_profiles``). The
plain run evaluates the baseline with one forward pass. Both are timed interleaved, best of
``--repeats``, and printed as a ratio; also a full single-unit scan of the layer (what
matching does not need), for scale.

    python benchmarks/bench_identity.py [--repeats 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch


def best(fn: Callable[[], Any], times: list[float]) -> None:
    """Time one call of ``fn`` into ``times`` (the caller takes the minimum)."""
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    import torchvision

    from pytest_unitablate.core.evaluation import evaluate
    from pytest_unitablate.core.identity import damage_profiles
    from pytest_unitablate.core.scan import scan
    from unitablate_demo.fixtures import resnet, test_data

    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(num_classes=10).eval().to(args.device)
    x = torch.randn(256, 3, 64, 64)
    y = torch.randint(0, 10, (256,))
    cases = [("demo resnet layer3.0 (597 digits)", resnet().to(args.device), test_data(),
              "layer3.0"),
             ("resnet18 layer3 (256 x 64x64)", r18, [(x[i:i + 64], y[i:i + 64])
                                                      for i in range(0, 256, 64)], "layer3")]
    print("| model, layer | plain pass | matching (profiles) | ratio | full scan | ratio |")
    print("|---|---|---|---|---|---|")
    for name, model, data, layer in cases:
        plain: list[float] = []
        match: list[float] = []
        sweep: list[float] = []
        for _ in range(args.repeats):
            best(lambda m=model, d=data: evaluate(m, d, device=args.device), plain)
            best(lambda m=model, d=data, ly=layer: damage_profiles(
                m, d, ly, device=args.device), match)
        for _ in range(max(1, args.repeats // 3)):
            best(lambda m=model, d=data, ly=layer: scan(m, d, ly, device=args.device), sweep)
        a, b, c = min(plain), min(match), min(sweep)
        print(f"| {name} | {a * 1000:.0f} ms | {b * 1000:.0f} ms | {b / a:.2f}x | "
              f"{c * 1000:.0f} ms | {c / a:.1f}x |")


if __name__ == "__main__":
    main()
