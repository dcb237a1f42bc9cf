"""Layer scans: the naive loop, Captum's LayerFeatureAblation and scan(), side by side.

For each layer: time per unit of
  * naive  — one full forward over the data per unit, with the ablation hook;
  * captum — ``LayerFeatureAblation`` with a channel mask (one full forward per perturbed
             channel group; a benchmark-only dependency);
  * scan   — ``pytest_unitablate.scan`` over *all* units of the layer;
and the ratio naive/scan. Naive and Captum are timed on a few units (their cost per unit is
constant), scan on every unit; the three are interleaved three times and the medians
kept. Then peak memory (maxrss of a fresh process) of a scan at two
data sizes, to show memory is bounded by the batch, not the data set.

    python benchmarks/bench_scan.py            # resnet18 (random weights) + the demo models
    python benchmarks/bench_scan.py --quick    # fewer units and layers

The data are the 597 test digits (16x16, upsampled to 32x32, grey repeated to 3 channels).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pytest_unitablate import ablate, evaluate, scan

TARGETS = {"layer4": 200.0, "layer3": 8.0, "layer2": 3.5}


def digits32() -> tuple[torch.Tensor, torch.Tensor]:
    from unitablate_demo.data import load_split

    x, y = load_split("test")
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x.repeat(1, 3, 1, 1).contiguous(), y


def batches(x: torch.Tensor, y: torch.Tensor, size: int = 128) -> list[tuple[Any, Any]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def time_naive(model: nn.Module, data: Any, layer: str, units: list[int]) -> float:
    start = time.perf_counter()
    for u in units:
        with ablate(model, {layer: [u]}):
            evaluate(model, data)
    return (time.perf_counter() - start) / len(units)


def time_captum(model: nn.Module, x: torch.Tensor, layer: str, groups: int) -> float:
    from captum.attr import LayerFeatureAblation

    module = dict(model.named_modules())[layer]
    with torch.no_grad():
        out: list[torch.Tensor] = []
        h = module.register_forward_hook(lambda m, a, o: out.append(o))
        model(x[:1])
        h.remove()
    channels = out[0].shape[1]
    mask = torch.full((1, channels, 1, 1), groups, dtype=torch.long)
    mask[0, :groups, 0, 0] = torch.arange(groups)  # `groups` single channels + the rest
    lfa = LayerFeatureAblation(model, module)
    with torch.no_grad():
        target = model(x).argmax(1)
    start = time.perf_counter()
    with torch.no_grad():
        lfa.attribute(x, target=target, layer_mask=mask, perturbations_per_eval=1)
    return (time.perf_counter() - start) / (groups + 1)


def time_scan(model: nn.Module, data: Any, layer: str) -> tuple[float, int, str]:
    start = time.perf_counter()
    result = scan(model, data, layer)
    elapsed = time.perf_counter() - start
    return elapsed / len(result.units), len(result.units), result.method


def peak_memory(layer: str, repeat: int) -> float:
    code = f"""
import resource, torch, torchvision, json, sys
sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
from bench_scan import digits32, batches
from pytest_unitablate import scan
torch.manual_seed(0)
m = torchvision.models.resnet18(weights=None, num_classes=10).eval()
x, y = digits32()
x, y = x.repeat({repeat}, 1, 1, 1), y.repeat({repeat})
scan(m, lambda: iter(batches(x, y)), {layer!r})
base = x.numel() * 4 / 2**20
print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, base]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    peak, data_mb = json.loads(out.stdout.strip().splitlines()[-1])
    return float(peak) - float(data_mb)


def main() -> None:
    import torchvision

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x, y = digits32()
    data = batches(x, y)
    sample = [0, 1] if args.quick else [0, 1, 2, 3]
    repeats = 1 if args.quick else 3
    rows = []
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    start = time.perf_counter()
    evaluate(model, data)
    full = time.perf_counter() - start
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; resnet18 (random "
          f"weights), 597 digits at 32x32; one full evaluation {full:.3f} s")
    layers = ["layer4", "layer3"] if args.quick else ["layer4", "layer3", "layer2"]
    for layer in layers:
        # Interleave: naive units, a full scan, more naive units, another scan, ...; the
        # medians of each see the same machine load.
        naive_t, scan_t, captum_t = [], [], []
        n_units, method = 0, ""
        for _ in range(repeats):
            naive_t.append(time_naive(model, data, layer, sample))
            per_unit, n_units, method = time_scan(model, data, layer)
            scan_t.append(per_unit)
            captum_t.append(time_captum(model, x, layer, len(sample)))
        rows.append(("resnet18", layer, n_units, method, statistics.median(naive_t),
                     statistics.median(captum_t), statistics.median(scan_t),
                     TARGETS.get(layer)))
    from unitablate_demo.fixtures import checkpoint, test_data

    demo_data = test_data()
    for name, layer in [("resnet", "layer3.1"), ("resnet", "layer2.1"), ("alexnet", "conv5")]:
        m = checkpoint(name)
        naive_t, scan_t = [], []
        for _ in range(repeats):
            naive_t.append(time_naive(m, demo_data, layer, sample))
            per_unit, n_units, method = time_scan(m, demo_data, layer)
            scan_t.append(per_unit)
        rows.append((f"demo {name}", layer, n_units, method, statistics.median(naive_t),
                     float("nan"), statistics.median(scan_t), None))
    print()
    print("| model | layer | units | scan engine | naive s/unit | captum s/unit | scan s/unit "
          "| naive/scan | target |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for model_name, layer, n_units, method, naive, captum, per_unit, target in rows:
        ratio = naive / per_unit
        verdict = "" if target is None else (f">= {target:g}x " +
                                              ("PASS" if ratio >= target else "MISS"))
        captum_text = "" if captum != captum else f"{captum:.4f}"
        print(f"| {model_name} | {layer} | {n_units} | {method} | {naive:.4f} | "
              f"{captum_text} | {per_unit:.5f} | {ratio:.1f}x | {verdict} |")
    if not args.quick:
        print()
        for repeat in (1, 4):
            extra = peak_memory("layer3", repeat)
            print(f"scan resnet18 layer3 over {597 * repeat} images: peak RSS minus the data "
                  f"tensor itself = {extra:.0f} MiB")


if __name__ == "__main__":
    main()
