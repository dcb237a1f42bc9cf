"""Whole pytest runs, side by side in one run: serial against ``-n 2``, a cold disk cache
against a warm one, and layer-wide checks that stop early against full sweeps.

Targets (issue 13), as ratios of wall times measured here:

* scan-heavy spec (resnet18 at 64x64, random weights, ``every_unit``/``any_unit`` on
  ``layer1``..``layer4`` plus named units): ``-n 2`` at least 1.7x faster than serial;
* demo spec: ``-n 2`` no more than 1.1x slower than serial;
* either spec, second run with a warm cache: at least 5x faster than the first;
* a passing ``any_unit`` on resnet18 ``layer3``: at least 10x faster than a full sweep.

Each configuration runs ``--repeats`` times, interleaved (A B C ... A B C ...), and the
medians are compared, so load on a shared machine hits all alike. Cold runs pass
``--cache-clear``; warm runs follow a run of the same configuration.

    python benchmarks/bench_xdist.py [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFTEST = '''
import pytest
import torch
import torchvision

DEVICE = "{device}"

@pytest.fixture(scope="session")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval().to(DEVICE)

@pytest.fixture(scope="session")
def images(resnet):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 3, 64, 64, generator=g)
    with torch.no_grad():
        y = resnet(x.to(DEVICE)).argmax(1).cpu()
    y[::10] = (y[::10] + 1) % 10           # 90% right at baseline
    return [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
'''

SCAN_SPEC = """\
unitablate: 1
model: resnet
data: images
checks:
{checks}
"""


def _scan_checks() -> str:
    lines = []
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        lines += [f"  - layer: {layer}", "    every_unit:", "      expect:",
                  "        overall: {max_drop: 60%}",
                  f"  - layer: {layer}", "    any_unit:", "      expect:",
                  "        overall: {min_drop: 60%}"]  # no unit does that: a full sweep
    for layer, unit in (("layer3.1", 7), ("layer4.0", 3)):
        lines += [f"  - layer: {layer}", f"    units: [{unit}]", "    expect:",
                  "      overall: {max_drop: 50%}"]
    return "\n".join(lines)


EARLY_SPEC = """\
unitablate: 1
model: resnet
data: images
checks:
  - layer: layer3
    any_unit:
      expect:
        overall: {min_drop: 0%}
"""


CALLS: dict[str, list[float]] = {}
CPU: dict[str, list[float]] = {}  # busy cores: CPU seconds (all processes) per wall second


def _pytest(cwd: Path, spec: str, cache_dir: Path, *args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    env.pop("OMP_NUM_THREADS", None)  # what a user's run has: torch picks its threads
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-o",
           f"cache_dir={cache_dir}", "--unitablate-spec", spec, *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU.setdefault(" ".join(args) + spec, []).append(cpu / elapsed)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}"
                         f"\n{done.stderr[-2000:]}")
    calls = re.findall(r"^([0-9.]+)s call ", done.stdout, flags=re.M)
    if calls:  # with --durations: the items' own time, without start-up and fixtures
        CALLS.setdefault(" ".join(args), []).append(sum(map(float, calls)))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("scan", "demo", "any_unit"), default=None,
                        help="run one group of configurations (its ratios only)")
    opts = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_xdist_"))
    (folder / "conftest.py").write_text(CONFTEST.format(device=opts.device))
    (folder / "scan.yaml").write_text(SCAN_SPEC.format(checks=_scan_checks()))
    (folder / "early.yaml").write_text(EARLY_SPEC)
    demo = str(ROOT / "specs" / "resnet.yaml")
    device = ("--unitablate-device", opts.device)

    configs: dict[str, tuple[str, tuple[str, ...]]] = {
        "scan serial cold": ("scan.yaml", ("--cache-clear", *device)),
        "scan serial warm": ("scan.yaml", device),
        "scan -n 2 cold": ("scan.yaml", ("--cache-clear", "-n", "2", *device)),
        "scan -n 2 warm": ("scan.yaml", ("-n", "2", *device)),
        "demo serial cold": (demo, ("--cache-clear",)),
        "demo serial warm": (demo, ()),
        "demo -n 2 cold": (demo, ("--cache-clear", "-n", "2")),
        "any_unit layer3 early": ("early.yaml", ("--unitablate-cache=off", "--durations=0",
                                                 "--durations-min=0", *device)),
        "any_unit layer3 full": ("early.yaml", ("--unitablate-cache=off", "--durations=0",
                                                "--durations-min=0",
                                                "--unitablate-full-sweeps", *device)),
    }
    if opts.only:
        configs = {k: v for k, v in configs.items() if k.startswith(opts.only)}
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(opts.repeats):
        for name, (spec, args) in configs.items():
            demo_run = spec == demo  # the demo's fixtures live in the repo's conftest.py
            cwd = ROOT if demo_run else folder
            cache = folder / ("demo_cache" if demo_run else "cache")
            times[name].append(_pytest(cwd, spec, cache, *args))
    med = {name: statistics.median(values) for name, values in times.items()}
    for name, value in med.items():
        spec, args = configs[name]
        busy = statistics.median(CPU[" ".join(args) + spec])
        print(f"{name:28s} {value:7.1f} s   {busy:4.2f} cores busy   "
              f"(runs: {', '.join(f'{t:.1f}' for t in times[name])})")
    print()
    if opts.only:
        return _only(opts.only, med)
    rows = [
        ("scan spec: serial / -n 2 (cold)", med["scan serial cold"] / med["scan -n 2 cold"],
         ">= 1.7"),
        ("demo spec: -n 2 / serial (cold)", med["demo -n 2 cold"] / med["demo serial cold"],
         "<= 1.1"),
        ("scan spec serial: cold / warm", med["scan serial cold"] / med["scan serial warm"],
         ">= 5"),
        ("scan spec -n 2: cold / warm", med["scan -n 2 cold"] / med["scan -n 2 warm"], ">= 5"),
        ("demo spec serial: cold / warm", med["demo serial cold"] / med["demo serial warm"],
         ">= 5"),
        ("any_unit layer3 run: full / early", med["any_unit layer3 full"]
         / med["any_unit layer3 early"], "(whole run)"),
    ]
    early_args, full_args = (" ".join(configs[k][1]) for k in ("any_unit layer3 early",
                                                                 "any_unit layer3 full"))
    early_call = statistics.median(CALLS[early_args])
    full_call = statistics.median(CALLS[full_args])
    print(f"any_unit layer3 item call time: early {early_call:.2f} s, full {full_call:.2f} s")
    rows.append(("any_unit layer3 item: full / early", full_call / early_call, ">= 10"))
    for label, ratio, target in rows:
        print(f"{label:36s} {ratio:6.2f}x   target {target}")
    print(f"\n(whole pytest runs; generated specs and caches in {folder})")


def _only(group: str, med: dict[str, float]) -> None:
    if group == "scan":
        print(f"scan spec: serial / -n 2 (cold) "
              f"{med['scan serial cold'] / med['scan -n 2 cold']:.2f}x; cold / warm serial "
              f"{med['scan serial cold'] / med['scan serial warm']:.2f}x, -n 2 "
              f"{med['scan -n 2 cold'] / med['scan -n 2 warm']:.2f}x")
    elif group == "demo":
        print(f"demo spec: -n 2 / serial (cold) "
              f"{med['demo -n 2 cold'] / med['demo serial cold']:.2f}x; cold / warm "
              f"{med['demo serial cold'] / med['demo serial warm']:.2f}x")
    else:
        early = statistics.median(next(v for k, v in CALLS.items() if "full" not in k))
        full = statistics.median(next(v for k, v in CALLS.items() if "full" in k))
        print(f"any_unit layer3 item call time: early {early:.2f} s, full {full:.2f} s: "
              f"{full / early:.2f}x; whole runs "
              f"{med['any_unit layer3 full'] / med['any_unit layer3 early']:.2f}x")


if __name__ == "__main__":
    main()
