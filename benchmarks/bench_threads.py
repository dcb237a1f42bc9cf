"""One layer scan with 2 torch threads against 1, alternated in one run: how much of a
2-core machine torch already uses for one sweep (what ``-n 2`` could at best gain).

    python benchmarks/bench_threads.py
"""

from __future__ import annotations

import statistics
import time

import torch

from pytest_unitablate import scan


def main(repeats: int = 2) -> None:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 3, 64, 64, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    data = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    times: dict[int, list[float]] = {2: [], 1: []}
    for _ in range(repeats):
        for threads in (2, 1):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            scan(model, data, "layer2", units=range(32))
            times[threads].append(time.perf_counter() - start)
    two, one = statistics.median(times[2]), statistics.median(times[1])
    print(f"layer2 scan, 32 units: 2 threads {two:.2f} s, 1 thread {one:.2f} s, "
          f"ratio {one / two:.2f}x")


if __name__ == "__main__":
    main()
