"""evaluate() against a bare ``model(x)`` loop over the same data, side by side in one run.

Target: evaluate() costs at most 5% more. The two are interleaved (A B A B ...) and the
medians compared, so load on this shared machine hits both alike.

    python benchmarks/bench_evaluate.py
"""

from __future__ import annotations

import statistics
import time

import torch

from pytest_unitablate import evaluate


def main(repeats: int = 9) -> float:
    import torchvision

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(597, 3, 32, 32)
    y = torch.randint(0, 10, (597,))
    loader = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 597, 64)]

    def bare() -> None:
        with torch.inference_mode():
            for inputs, _ in loader:
                model(inputs)

    def ours() -> None:
        evaluate(model, loader)

    bare()
    ours()  # warm-up
    times: dict[str, list[float]] = {"bare": [], "evaluate": []}
    for _ in range(repeats):
        for name, fn in (("bare", bare), ("evaluate", ours)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    b, e = statistics.median(times["bare"]), statistics.median(times["evaluate"])
    ratio = e / b
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, resnet18, "
          f"597 images at 32x32, batches of 64, {repeats} interleaved repeats")
    print(f"bare model(x) loop : {b * 1000:8.1f} ms (median)")
    print(f"evaluate()         : {e * 1000:8.1f} ms (median)")
    print(f"ratio evaluate/bare: {ratio:.3f}  -> {'PASS' if ratio <= 1.05 else 'FAIL'} "
          f"(target <= 1.05)")
    return ratio


if __name__ == "__main__":
    main()
