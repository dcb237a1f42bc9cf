"""How the prefix engine cuts its work: units and examples per suffix pass.

Two things decide it, both measured on the first batch rather than fixed in advance:

* **memory**: one suffix pass on one example with one unit ablated is measured with
  :func:`~pytest_unitablate.core.scan.memory.graph_peak_bytes`; a pass on ``u`` units and ``e``
  examples holds about ``u * e`` times that, so ``u * e`` is capped by the budget. The
  examples of a batch are split only when one unit on the whole batch does not fit;
* **speed**: units per pass are tried as 1, 2, 4, ... on real work (the first batch's own
  units, so nothing is computed twice) while the time per unit keeps falling by at least
  10%; the fastest is kept. If even that is slower than a plain forward per unit (the naive
  loop), ``scan()`` runs the naive loop instead and says why.

Example::

    >>> plan = Calibration(max_units=8)
    >>> for units, seconds in [(1, 1.0), (2, 1.2), (4, 2.4)]:
    ...     plan.record(units, seconds)
    >>> plan.done, plan.chosen      # 1 -> 2 units gained 40% per unit, 2 -> 4 nothing
    (True, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_unitablate.core.scan.memory import format_bytes


@dataclass(frozen=True)
class Plan:
    """Units and examples per suffix pass, and what chose them."""

    units: int
    examples: int
    row_bytes: int
    budget: int
    how: str

    def describe(self) -> str:
        """One line for ``ScanResult.plan``, the ``-v`` summary and the JSON report."""
        return (f"{self.units} unit(s) x {self.examples} example(s) per suffix pass "
                f"({self.how}; one unit on one example needs {format_bytes(self.row_bytes)}"
                f", budget {format_bytes(self.budget)})")


def limits(batch: int, n_units: int, row_bytes: int, budget: int) -> tuple[int, int]:
    """``(examples per pass, most units per pass)`` that keep ``units * examples *
    row_bytes`` within ``budget`` (at least one of each).

    >>> limits(batch=256, n_units=512, row_bytes=1024, budget=1024 * 1024)
    (256, 4)
    >>> limits(batch=256, n_units=512, row_bytes=1024, budget=100 * 1024)
    (100, 1)
    """
    rows = max(1, budget // max(1, row_bytes))
    examples = max(1, min(batch, rows))
    return examples, max(1, min(n_units, rows // examples))


class Calibration:
    """Chooses units per pass from measured times: 1, 2, 4, ... up to ``max_units``,
    doubling while the time per unit falls by at least 10%."""

    GAIN = 0.9

    def __init__(self, max_units: int) -> None:
        self.max_units = max(1, max_units)
        self.per_unit: dict[int, float] = {}
        self.next = 1
        self.done = False

    def record(self, units: int, seconds: float) -> None:
        """A pass of ``units`` units (``== self.next``) took ``seconds``."""
        best = min(self.per_unit.values(), default=float("inf"))
        self.per_unit[units] = seconds / units
        if seconds / units < self.GAIN * best and units * 2 <= self.max_units:
            self.next = units * 2
        else:
            self.done = True

    @property
    def chosen(self) -> int:
        """The fastest units per pass measured so far (1 before any measurement)."""
        if not self.per_unit:
            return 1
        return min(self.per_unit, key=lambda k: (self.per_unit[k], k))


def slower_than_naive(prefix: float, per_unit: float, whole: float, n_units: int) -> bool:
    """Whether the prefix engine (one ``prefix`` pass, then ``per_unit`` per unit) costs more
    than the naive loop (one ``whole`` forward per unit); times per example.

    >>> slower_than_naive(prefix=0.2, per_unit=0.9, whole=1.0, n_units=8)
    False
    >>> slower_than_naive(prefix=0.2, per_unit=1.1, whole=1.0, n_units=8)
    True
    """
    return prefix + n_units * per_unit > n_units * whole
