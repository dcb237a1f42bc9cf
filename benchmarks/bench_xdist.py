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

    python benchmarks/bench_xdist.py [--repeats 2] [--device cpu] [--only GROUP]
                                     [--against REV]

``--against REV`` also times the ``any_unit`` full sweep with the package as it was at a
git revision, side by side (the issue's "today's full sweep": ``6527206``, the commit it
was filed on). The "floor" runs are two trivial tests with a torch fixture: what pytest,
xdist, torch's import and the other installed plugins cost before any spec runs.
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


FLOOR_CONFTEST = '''
import pytest

@pytest.fixture(scope="session")
def torch_module():
    import torch
    return torch
'''

FLOOR_TESTS = '''
def test_a(torch_module):
    assert torch_module.ones(2).sum() == 2

def test_b(torch_module):
    assert torch_module.zeros(1).sum() == 0
'''


def _pytest(name: str, cwd: Path, spec: str | None, cache_dir: Path, *args: str,
            code: Path | None = None) -> float:
    """One pytest run in ``cwd``; ``spec=None`` runs the tests found there; ``code``: the
    package to import instead of the installed one (an older revision)."""
    path = [str(code)] if code is not None else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(cwd)])}
    env.pop("OMP_NUM_THREADS", None)  # what a user's run has: torch picks its threads
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-o",
           f"cache_dir={cache_dir}", *(("--unitablate-spec", spec) if spec else ()), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU.setdefault(name, []).append(cpu / elapsed)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}"
                         f"\n{done.stderr[-2000:]}")
    calls = re.findall(r"^([0-9.]+)s call ", done.stdout, flags=re.M)
    if calls:  # with --durations: the items' own time, without start-up and fixtures
        CALLS.setdefault(name, []).append(sum(map(float, calls)))
    return elapsed


def _checkout(rev: str, folder: Path) -> Path:
    """The package as it was at ``rev`` (``git archive``), to import instead of this one."""
    target = folder / f"at_{rev}"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "pytest_unitablate"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("scan", "demo", "any_unit", "floor"), default=None,
                        help="run one group of configurations (its ratios only)")
    parser.add_argument("--against", metavar="REV", default=None,
                        help="also time the any_unit full sweep with the package as it was at "
                        "this git revision (e.g. the commit an issue was filed on)")
    opts = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_xdist_"))
    (folder / "conftest.py").write_text(CONFTEST.format(device=opts.device))
    (folder / "scan.yaml").write_text(SCAN_SPEC.format(checks=_scan_checks()))
    (folder / "early.yaml").write_text(EARLY_SPEC)
    floor = folder / "floor"
    floor.mkdir()
    (floor / "conftest.py").write_text(FLOOR_CONFTEST)
    (floor / "test_floor.py").write_text(FLOOR_TESTS)
    demo = str(ROOT / "specs" / "resnet.yaml")
    device = ("--unitablate-device", opts.device)
    timed = ("--durations=0", "--durations-min=0", *device)

    # name: (where, spec or None for the tests there, pytest arguments, package to use)
    configs: dict[str, tuple[Path, str | None, tuple[str, ...], Path | None]] = {
        "scan serial cold": (folder, "scan.yaml", ("--cache-clear", *device), None),
        "scan serial warm": (folder, "scan.yaml", device, None),
        "scan -n 2 cold": (folder, "scan.yaml", ("--cache-clear", "-n", "2", *device), None),
        "scan -n 2 warm": (folder, "scan.yaml", ("-n", "2", *device), None),
        "demo serial cold": (ROOT, demo, ("--cache-clear",), None),
        "demo serial warm": (ROOT, demo, (), None),
        "demo -n 2 cold": (ROOT, demo, ("--cache-clear", "-n", "2"), None),
        "floor serial": (floor, None, (), None),
        "floor -n 2": (floor, None, ("-n", "2"), None),
        "any_unit layer3 early": (folder, "early.yaml", ("--unitablate-cache=off", *timed),
                                  None),
        "any_unit layer3 full": (folder, "early.yaml", ("--unitablate-cache=off",
                                                        "--unitablate-full-sweeps", *timed),
                                 None),
    }
    if opts.against:  # before the cache, early stop and these options existed
        configs[f"any_unit layer3 full @{opts.against}"] = (
            folder, "early.yaml", timed, _checkout(opts.against, folder))
    if opts.only:
        configs = {k: v for k, v in configs.items() if k.startswith(opts.only)}
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(opts.repeats):
        for name, (cwd, spec, args, code) in configs.items():
            cache = folder / ("demo_cache" if spec == demo else "cache")
            times[name].append(_pytest(name, cwd, spec, cache, *args, code=code))
    med = {name: statistics.median(values) for name, values in times.items()}
    for name, value in med.items():
        busy = statistics.median(CPU[name])
        print(f"{name:34s} {value:7.1f} s   {busy:4.2f} cores busy   "
              f"(runs: {', '.join(f'{t:.1f}' for t in times[name])})")
    print()
    calls = {name: statistics.median(v) for name, v in CALLS.items()}
    for name, value in calls.items():
        print(f"{name:34s} item call time {value:6.2f} s")
    rows = _ratios(med, calls, opts.against)
    for label, ratio, target in rows:
        print(f"{label:40s} {ratio:6.2f}x   target {target}")
    print(f"\n(whole pytest runs; generated specs and caches in {folder})")


def _ratios(med: dict[str, float], calls: dict[str, float], against: str | None
            ) -> list[tuple[str, float, str]]:
    """The ratios of the configurations that ran: (label, ratio, target)."""
    wanted = [
        ("scan spec: serial / -n 2 (cold)", "scan serial cold", "scan -n 2 cold", ">= 1.7"),
        ("demo spec: -n 2 / serial (cold)", "demo -n 2 cold", "demo serial cold", "<= 1.1"),
        ("scan spec serial: cold / warm", "scan serial cold", "scan serial warm", ">= 5"),
        ("scan spec -n 2: cold / warm", "scan -n 2 cold", "scan -n 2 warm", ">= 5"),
        ("demo spec serial: cold / warm", "demo serial cold", "demo serial warm", ">= 5"),
        ("floor, 2 torch tests: -n 2 / serial", "floor -n 2", "floor serial",
         "(what xdist costs by itself)"),
        ("demo spec cold / floor serial", "demo serial cold", "floor serial",
         "(the most cold / warm can be)"),
        ("any_unit layer3 run: full / early", "any_unit layer3 full", "any_unit layer3 early",
         "(whole run)"),
    ]
    rows = [(label, med[a] / med[b], target) for label, a, b, target in wanted
            if a in med and b in med]
    early = calls.get("any_unit layer3 early")
    for name, label in (("any_unit layer3 full", "any_unit layer3 item: full / early"),
                        (f"any_unit layer3 full @{against}",
                         f"any_unit layer3 item: full @{against} / early")):
        if early and name in calls:
            rows.append((label, calls[name] / early, ">= 10"))
    return rows


if __name__ == "__main__":
    main()
