"""Big models stay inside memory: resnet50 at 224x224 (random weights), 256 images.

Every measurement runs in a fresh process that reports its wall time and its peak
resident memory (``ru_maxrss``; on CUDA also torch's peak allocation), side by side:

* ``evaluate``: one plain pass over the data, the floor any scan of this model pays
  (torch, the weights, the data, one batch's activations);
* ``scan layer4``: every unit of ``layer4`` (2,048; the closed-form engine);
* ``scan layer3``: ``--units`` units of ``layer3`` (of 1,024; the prefix engine), once with
  the default budget (2 GiB) and once with ``--small-budget``; the time for all 1,024 units
  is extrapolated from the measured time per unit and labelled so;
* ``spec``: a spec through pytest (named units on ``layer3.5`` and ``layer4.2``, a passing
  ``any_unit`` on ``layer3``, ``every_unit`` on ``layer4``).

The budget bounds the stacked suffix passes (units x examples x the measured bytes of one
unit on one example); the table prints that planned size against the budget, and the peak
RSS beyond the plain evaluation's, which also holds one batch's layer output and entry
convolutions. The data come in batches of ``--batch`` (32) images, as a user's
loader would give them.

    python benchmarks/bench_big.py [--units 32] [--small-budget 16MiB] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def model_and_data(device: str = "cpu", batch: int = 32, n: int = 256) -> tuple[Any, Any]:
    """resnet50 (random weights, 10 classes) and ``n`` random 224x224 images in batches,
    labelled with the model's own predictions, one in ten moved to another class (so the
    baseline is 90% right)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, num_classes=10).eval().to(device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 224, 224, generator=g)
    labels = []
    with torch.no_grad():
        for i in range(0, n, batch):
            labels.append(model(x[i:i + batch].to(device)).argmax(1).cpu())
    y = torch.cat(labels)
    y[::10] = (y[::10] + 1) % 10
    return model, [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def _peaks(device: str) -> dict[str, float]:
    import torch

    out = {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        out["cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def child(kind: str, opts: argparse.Namespace) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    from pytest_unitablate import evaluate, scan
    from pytest_unitablate.plugin.options import parse_size

    model, data = model_and_data(opts.device, opts.batch)
    start = time.perf_counter()
    result: dict[str, Any] = {}
    if kind == "evaluate":
        evaluate(model, data)
    elif kind == "layer4":
        r = scan(model, data, "layer4", progress=False)
        result.update(method=r.method, units=len(r.units), plan=r.plan)
    elif kind in ("layer3", "layer3-small"):
        budget = parse_size(opts.small_budget) if kind == "layer3-small" else None
        r = scan(model, data, "layer3", units=range(opts.units), memory_budget=budget,
                 progress=False)
        result.update(method=r.method, units=len(r.units), plan=r.plan)
    else:
        raise SystemExit(f"unknown measurement {kind}")
    result["seconds"] = time.perf_counter() - start
    result.update(_peaks(opts.device))
    return result


CONFTEST = '''
import sys
import pytest
sys.path.insert(0, {here!r})
from bench_big import model_and_data

@pytest.fixture(scope="session")
def _both():
    return model_and_data({device!r}, {batch})

@pytest.fixture(scope="session")
def resnet50(_both):
    return _both[0]

@pytest.fixture(scope="session")
def images(_both):
    return _both[1]
'''

SPEC = """\
unitablate: 1
model: resnet50
data: images
checks:
  - layer: layer3.5
    units: [7]
    expect:
      overall: {max_drop: 50%}
  - layer: layer4.2
    units: [3]
    expect:
      overall: {max_drop: 50%}
  - layer: layer3
    any_unit:
      expect:
        overall: {min_drop: 0%}
  - layer: layer4
    every_unit:
      expect:
        overall: {max_drop: 100%}
"""


def spec_child(opts: argparse.Namespace) -> dict[str, Any]:
    import pytest

    folder = Path(tempfile.mkdtemp(prefix="bench_big_"))
    (folder / "conftest.py").write_text(CONFTEST.format(here=str(HERE), device=opts.device,
                                                        batch=opts.batch))
    (folder / "big.yaml").write_text(SPEC)
    os.chdir(folder)
    start = time.perf_counter()
    code = pytest.main(["-q", "-p", "no:randomly", "-p", "no:cacheprovider",
                        "--unitablate-spec", "big.yaml", "--unitablate-report", "r.json",
                        "--unitablate-device", opts.device, "-W", "ignore"])
    seconds = time.perf_counter() - start
    items = json.loads((folder / "r.json").read_text())["items"]
    return {"seconds": seconds, "exit": int(code), **_peaks(opts.device),
            "outcomes": {i["id"]: i["outcome"] for i in items},
            "plans": sorted({str(i.get("engine_plan")) for i in items if i.get("engine")})}


def _spawn(kind: str, opts: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
           "--units", str(opts.units), "--small-budget", opts.small_budget,
           "--device", opts.device, "--batch", str(opts.batch)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _planned_bytes(plan: str) -> float:
    """units x examples x bytes per (unit, example), read back from ``ScanResult.plan``."""
    import re

    found = re.match(r"(\d+) unit\(s\) x (\d+) example\(s\).*needs ([0-9.]+) (B|KiB|MiB|GiB)",
                     plan)
    if found is None:
        return 0.0
    scale = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[found.group(4)]
    return int(found.group(1)) * int(found.group(2)) * float(found.group(3)) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--small-budget", default="16MiB")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--child", default=None)
    opts = parser.parse_args()
    if opts.child == "spec":
        print(json.dumps(spec_child(opts)))
        return
    if opts.child:
        print(json.dumps(child(opts.child, opts)))
        return

    from pytest_unitablate.core.scan.memory import DEFAULT_MEMORY_BUDGET
    from pytest_unitablate.plugin.options import parse_size

    runs = {kind: _spawn(kind, opts)
            for kind in ("evaluate", "layer4", "layer3", "layer3-small", "spec")}
    floor = runs["evaluate"]["rss_mib"]
    small = parse_size(opts.small_budget)
    print(f"resnet50 (random weights) at 224x224, 256 images in batches of {opts.batch}, "
          f"device {opts.device}; plain evaluation: {runs['evaluate']['seconds']:.1f} s, "
          f"peak RSS {floor:.0f} MiB")
    print()
    print("| run | time | peak RSS | RSS beyond the plain evaluation | stacked pass "
          "(planned) | budget | plan |")
    print("|---|---:|---:|---:|---:|---:|---|")
    budgets = {"layer4": DEFAULT_MEMORY_BUDGET, "layer3": DEFAULT_MEMORY_BUDGET,
               "layer3-small": small, "spec": DEFAULT_MEMORY_BUDGET}
    for kind in ("layer4", "layer3", "layer3-small", "spec"):
        r = runs[kind]
        extra = r["rss_mib"] - floor
        what = {"layer4": f"scan layer4 ({r.get('units')} units, {r.get('method')})",
                "layer3": f"scan layer3 ({r.get('units')} of 1024 units, {r.get('method')})",
                "layer3-small": f"scan layer3, budget {opts.small_budget} ({r.get('units')} "
                                f"units, {r.get('method')})",
                "spec": f"spec via pytest (exit {r.get('exit')})"}[kind]
        plans = [r["plan"]] if r.get("plan") else [p for p in r.get("plans", []) if p != "None"]
        stacked = max((_planned_bytes(p) for p in plans), default=0)
        verdict = "" if not plans else (" (within)" if stacked <= budgets[kind] else " (OVER)")
        print(f"| {what} | {r['seconds']:.1f} s | {r['rss_mib']:.0f} MiB | {extra:.0f} MiB | "
              f"{stacked / 2**20:.1f} MiB{verdict} | {budgets[kind] / 2**20:.0f} MiB | "
              f"{'; '.join(plans) or '-'} |")
    per_unit = (runs["layer3"]["seconds"] - runs["evaluate"]["seconds"]) / opts.units
    print()
    print(f"layer3, all 1024 units (extrapolated from {opts.units} measured, not run): about "
          f"{(runs['evaluate']['seconds'] + 1024 * per_unit) / 60:.0f} min; the naive loop "
          f"would take about {1024 * runs['evaluate']['seconds'] / 60:.0f} min")
    print(f"spec outcomes: {json.dumps(runs['spec']['outcomes'])}")


if __name__ == "__main__":
    main()
