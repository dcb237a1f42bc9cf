"""A spec of many named checks on one layer: grouped through the scan engine against one
plain forward per check, whole pytest runs side by side in one run.

The spec names each of the demo AlexNet's 256 ``conv5`` units in its own check, with a
class and an ``overall`` expectation (512 items). Two configurations, each a fresh
``pytest --unitablate-spec`` process with the disk cache off:

* ``grouped``: the engine plans the layer's named checks together (one scan; the prefix
  kept from the baseline pass, the rows batched in suffix passes);
* ``plain``: ``--unitablate-plain-passes``, one full forward pass per check.

Target: grouped at least 5x faster than plain, whole pytest run included, with the same
outcome for every item (checked here from the two JSON reports). Runs interleave
(A B A B ...) and medians are compared, so load on a shared machine hits both alike.

    python benchmarks/bench_named.py [--repeats 2] [--units 256] [--layer conv5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def spec_text(units: int, layer: str) -> str:
    lines = ["unitablate: 1", "model: digits_alexnet", "data: digits_test",
             f"classes: [{', '.join(CLASSES)}]", "checks:"]
    for u in range(units):
        lines += [f"  - layer: {layer}", f"    units: [{u}]", "    expect:",
                  f"      {CLASSES[u % 10]}: {{max_drop: 30%}}",
                  "      overall: {max_drop: 3%}"]
    return "\n".join(lines) + "\n"


def run(folder: Path, plain: bool, report: Path) -> float:
    cmd = [sys.executable, "-m", "pytest", "--unitablate-spec", "named.yaml", "-q",
           "-p", "no:randomly", "-p", "no:cacheprovider", "--unitablate-report", str(report)]
    if plain:
        cmd.append("--unitablate-plain-passes")
    # bytecode is written as on a user's machine: with PYTHONDONTWRITEBYTECODE set (as in
    # this workplace's shells), every run compiles every module again, and pytest
    # rewrites the asserts of the plugin's package afresh (about 3 s here)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTEST_") and k != "PYTHONDONTWRITEBYTECODE"}
    began = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    took = time.perf_counter() - began
    if proc.returncode not in (0, 1):
        sys.exit(f"pytest failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr}")
    return took


def outcomes(report: Path) -> dict[str, str]:
    return {r["id"]: r["outcome"] for r in json.loads(report.read_text())["items"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--layer", default="conv5")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(ROOT / "conftest.py", folder / "conftest.py")
        (folder / "named.yaml").write_text(spec_text(args.units, args.layer))
        times: dict[str, list[float]] = {"grouped": [], "plain": []}
        run(folder, False, folder / "warm.json")  # bytecode written once, for both
        for _ in range(args.repeats):
            for name in times:
                times[name].append(run(folder, name == "plain", folder / f"{name}.json"))
        same = outcomes(folder / "grouped.json") == outcomes(folder / "plain.json")
        failed = sum(o == "failed" for o in outcomes(folder / "grouped.json").values())
    grouped, plain = statistics.median(times["grouped"]), statistics.median(times["plain"])
    print(f"spec: {args.units} named checks on demo alexnet {args.layer} "
          f"({2 * args.units} items, {failed} failing), cache off, medians of "
          f"{args.repeats}")
    print(f"  grouped (one scan)          {grouped:7.1f} s   runs {times['grouped']}")
    print(f"  plain (--unitablate-plain-passes) {plain:7.1f} s   runs {times['plain']}")
    print(f"  plain / grouped: {plain / grouped:.1f}x (target >= 5x); same outcomes: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
