"""The suite's own rules, so that a CPU-dependent or load-dependent assertion cannot be
written again without a reason (``tests/numerics.py`` states the policy):

* no test reads the wall clock (a timing assertion fails under load; count calls);
* no relative tolerance tighter than float32 can promise (``rtol``/``rel`` below 1e-5)
  unless the line says why it is exact, ``# exact: ...`` (the same operations in the same
  order on both sides, or float64 arithmetic on counts).
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CLOCK = re.compile(r"\btime\.(perf_counter|time|monotonic|process_time)(_ns)?\(")
RELATIVE = re.compile(r"\b(rtol|rel)\s*=\s*([0-9.]+(?:e-?[0-9]+)?)")


def _lines() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == Path(__file__).name:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found.append((str(path.relative_to(TESTS)), number, line))
    return found


def test_no_test_reads_the_wall_clock() -> None:
    offenders = [f"{p}:{n}: {line.strip()}" for p, n, line in _lines() if CLOCK.search(line)]
    assert not offenders, ("tests must not assert on the wall clock (count calls instead; "
                           "timings belong in benchmarks/):\n" + "\n".join(offenders))


def test_no_relative_tolerance_tighter_than_float32_without_a_reason() -> None:
    offenders = []
    for p, n, line in _lines():
        for match in RELATIVE.finditer(line):
            if float(match.group(2)) < 1e-5 and "# exact" not in line:
                offenders.append(f"{p}:{n}: {line.strip()}")
    assert not offenders, (
        "a relative tolerance below 1e-5 is tighter than float32 rounding promises on "
        "another CPU: use numerics.assert_f32_close, or say why the comparison is exact "
        "with '# exact: ...':\n" + "\n".join(offenders))


def test_the_rules_see_what_they_forbid() -> None:
    assert CLOCK.search("t0 = time.perf_counter()") and not CLOCK.search("perf_counter_ok")
    assert RELATIVE.search("np.testing.assert_allclose(a, b, rtol=1e-6)")
    assert float(RELATIVE.search("approx(x, rel=2e-7)").group(2)) < 1e-5  # type: ignore[union-attr]
