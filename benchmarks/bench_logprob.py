"""The cost of the log-probability measure: scans with it against scans without it,
side by side in one run.

Every pass keeps, beside each example's prediction, its log-probability of the true class
(``log_softmax`` of the same logits, one gather). This measures what that costs: the same
full layer scans of the demo models, once as shipped and once with the log-probability
replaced by a stub that returns zeros (what an accuracy-only build would do), interleaved
(A B A B ...) so load on a shared machine hits both alike. Both the medians and the
fastest runs are compared: a scan here takes 0.1-1 s, and on a shared machine the fastest
of several runs is the estimate least disturbed by other load.

The prefix engine's units per pass are fixed (``chunk_size``): chosen by timing, they
would differ between runs and swamp what is measured. Target: within 5% of the
accuracy-only scan on every layer.

    python benchmarks/bench_logprob.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from pytest_unitablate.core import evaluation
from pytest_unitablate.core.scan import api, closed_form, collect, heads, suffix
from unitablate_demo import fixtures

MODULES = (evaluation, collect, closed_form, heads, suffix, api)

CASES: list[tuple[str, Callable[[], torch.nn.Module], str, dict[str, Any]]] = [
    ("resnet layer3.0", fixtures.resnet, "layer3.0", {"chunk_size": 8}),
    ("resnet layer3.1", fixtures.resnet, "layer3.1", {}),
    ("alexnet conv5", fixtures.alexnet, "conv5", {"chunk_size": 16}),
    ("vit mlp (block 1)", fixtures.vit, "encoder.layers.encoder_layer_1.mlp.1",
     {"channel_dim": -1, "chunk_size": 16}),
    ("vit heads (block 2)", fixtures.vit, "encoder.layers.encoder_layer_2.self_attention",
     {"unit": "head"}),
]


def _stub(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.zeros(logits.shape[0])


@contextmanager
def accuracy_only() -> Iterator[None]:
    """Every engine's ``true_logprob`` replaced by the stub, restored after."""
    saved = [(m, m.true_logprob) for m in MODULES if hasattr(m, "true_logprob")]
    try:
        for module, _ in saved:
            module.true_logprob = _stub  # type: ignore[attr-defined]
        yield
    finally:
        for module, fn in saved:
            module.true_logprob = fn  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = fixtures.test_data()
    print(f"torch threads: {torch.get_num_threads()}; {args.repeats} interleaved repeats; "
          f"median seconds per full scan")
    print(f"{'layer':22s} {'engine':12s} {'with logprob':>13s} {'accuracy only':>14s} "
          f"{'median ratio':>13s} {'fastest ratio':>14s}")
    worst = 0.0
    for name, make, layer, extra in CASES:
        model = make()
        times: dict[bool, list[float]] = {True: [], False: []}
        method = ""
        for _ in range(args.repeats):
            for keep in (True, False):
                began = time.perf_counter()
                if keep:
                    result = api.scan(model, data, layer, progress=False, **extra)
                else:
                    with accuracy_only():
                        result = api.scan(model, data, layer, progress=False, **extra)
                times[keep].append(time.perf_counter() - began)
                method = result.method
        with_lp, without = statistics.median(times[True]), statistics.median(times[False])
        fastest = min(times[True]) / min(times[False])
        worst = max(worst, with_lp / without)
        print(f"{name:22s} {method:12s} {with_lp:13.3f} {without:14.3f} "
              f"{with_lp / without:13.3f} {fastest:14.3f}")
    print(f"worst median ratio {worst:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
