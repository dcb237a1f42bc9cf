"""What the installed-but-unused plugin costs a pytest run, side by side in one run.

Runs ``python -m pytest -q`` on a trivial test file with the plugin enabled (the default once
installed) and with ``-p no:unitablate``, interleaved, and prints the medians and the ratio;
then the plugin module's own import time (``python -X importtime``).

    python benchmarks/bench_import.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                   cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main(repeats: int = 9) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "test_trivial.py").write_text(
            "import sys\n\ndef test_x():\n    assert 'torch' not in sys.modules\n")
        on: list[float] = []
        off: list[float] = []
        for _ in range(repeats):
            on.append(_run([], root))
            off.append(_run(["-p", "no:unitablate"], root))
    a, b = statistics.median(on), statistics.median(off)
    out = subprocess.run([sys.executable, "-X", "importtime", "-c",
                          "import pytest_unitablate.plugin"], capture_output=True, text=True)
    own = [line for line in out.stderr.splitlines() if line.rstrip().endswith(
        "pytest_unitablate.plugin")]
    cumulative_us = int(own[-1].split("|")[1]) if own else -1
    print(f"pytest run, plugin enabled : {a * 1000:7.1f} ms (median of {repeats})")
    print(f"pytest run, -p no:unitablate: {b * 1000:7.1f} ms")
    print(f"ratio enabled/disabled      : {a / b:.3f}")
    print(f"import pytest_unitablate.plugin (cumulative, incl. pytest): {cumulative_us} us")
    return a / b


if __name__ == "__main__":
    main()
