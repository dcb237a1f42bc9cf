"""Paired statistics of a drop in accuracy (pure Python, torch-free).

Baseline and ablated predictions are made on the *same* examples, so a drop is a difference
of paired proportions. With per-example correctness before and after, the 2x2 table is

=================  ===============  ================
.                  ablated right    ablated wrong
baseline right     ``a``            ``b`` (broken)
baseline wrong     ``c`` (fixed)    ``d``
=================  ===============  ================

and the drop is ``(b - c) / n``.

* :func:`paired_drop_ci`: Newcombe's (1998) hybrid score interval for a difference of
  paired proportions ("method 10": Wilson intervals of both margins combined with the
  phi correlation of the table). It stays inside [-1, 1] and keeps close to nominal coverage
  for the small per-class counts (tens of examples) this tool sees, where the Wald interval
  does not.
* :func:`mcnemar_exact_p`: McNemar's exact two-sided test: under "ablation changes nothing"
  the discordant pairs split 50/50, so ``p = min(1, 2 * P[Binom(b + c, 1/2) <= min(b, c)])``.

Example::

    >>> t = PairedTable.from_counts(a=50, b=8, c=1, d=1)
    >>> round(t.drop, 4)
    0.1167
    >>> lo, hi = paired_drop_ci(t)
    >>> round(lo, 3), round(hi, 3)
    (0.014, 0.229)
    >>> round(mcnemar_exact_p(t), 4)
    0.0391
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist


@dataclass(frozen=True)
class PairedTable:
    """Counts of the paired 2x2 table (see the module docstring)."""

    a: int
    b: int
    c: int
    d: int

    @classmethod
    def from_counts(cls, *, a: int, b: int, c: int, d: int) -> PairedTable:
        return cls(a, b, c, d)

    @classmethod
    def from_correct(cls, before: Sequence[bool], after: Sequence[bool]) -> PairedTable:
        """Build the table from per-example correctness before and after ablation."""
        if len(before) != len(after):
            raise ValueError(f"paired samples differ in length: {len(before)} vs {len(after)}")
        a = b = c = d = 0
        for x, y in zip(before, after, strict=True):
            if x and y:
                a += 1
            elif x:
                b += 1
            elif y:
                c += 1
            else:
                d += 1
        return cls(a, b, c, d)

    @property
    def n(self) -> int:
        return self.a + self.b + self.c + self.d

    @property
    def baseline(self) -> float:
        return (self.a + self.b) / self.n

    @property
    def ablated(self) -> float:
        return (self.a + self.c) / self.n

    @property
    def drop(self) -> float:
        return (self.b - self.c) / self.n


def z_value(level: float) -> float:
    """Two-sided standard normal quantile: ``z_value(0.95)`` is about 1.96."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(1.0 - (1.0 - level) / 2.0)


def wilson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion.

    >>> [round(v, 4) for v in wilson(0, 10)]
    [0.0, 0.2775]
    """
    if n == 0:
        return 0.0, 1.0
    z = z_value(level)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_drop_ci(table: PairedTable, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) of the paired drop ``p1 - p2``."""
    n = table.n
    if n == 0:
        raise ValueError("no examples: a confidence interval needs at least one")
    p1, p2 = table.baseline, table.ablated
    l1, u1 = wilson(table.a + table.b, n, level)
    l2, u2 = wilson(table.a + table.c, n, level)
    margins = (
        (table.a + table.b) * (table.c + table.d) * (table.a + table.c) * (table.b + table.d)
    )
    # Newcombe's phi with his correction: shrink a positive ad - bc by n/2, keep a negative one.
    cross = table.a * table.d - table.b * table.c
    corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
    phi = 0.0 if margins == 0 else corrected / math.sqrt(margins)
    theta = p1 - p2
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, theta - delta), min(1.0, theta + eps)


def mcnemar_exact_p(table: PairedTable) -> float:
    """McNemar's exact two-sided p-value from the discordant pairs (1.0 if there are none)."""
    m = table.b + table.c
    if m == 0:
        return 1.0
    k = min(table.b, table.c)
    tail = Fraction(sum(math.comb(m, i) for i in range(k + 1)), 2**m)
    return float(min(Fraction(1), 2 * tail))


@dataclass(frozen=True)
class PairedDiffs:
    """Summary of paired per-example values (the log-probability of the true class) before
    and after an ablation: ``n``, the two means, and the mean and standard deviation
    (``n - 1`` denominator) of the per-example drops ``before - after``.

    >>> d = PairedDiffs.from_values([-0.1, -0.2, -0.3], [-0.5, -0.4, -0.9])
    >>> round(d.mean, 4), round(d.sd, 4)
    (0.4, 0.2)
    """

    n: int
    before: float
    after: float
    mean: float
    sd: float

    @classmethod
    def from_values(cls, before: Sequence[float], after: Sequence[float]) -> PairedDiffs:
        if len(before) != len(after):
            raise ValueError(f"paired samples differ in length: {len(before)} vs {len(after)}")
        n = len(before)
        if n == 0:
            raise ValueError("no examples: a paired drop needs at least one")
        diffs = [float(x) - float(y) for x, y in zip(before, after, strict=True)]
        mean = math.fsum(diffs) / n
        var = math.fsum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else math.nan
        return cls(n=n, before=math.fsum(map(float, before)) / n,
                   after=math.fsum(map(float, after)) / n, mean=mean, sd=math.sqrt(var))


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(stat: float, df: int) -> float:
    """``P(|T| >= |stat|)`` for Student's t with ``df`` degrees of freedom.

    >>> round(t_two_sided_p(2.0, 10), 5)
    0.07339
    """
    return _betainc(df / 2.0, 0.5, df / (df + stat * stat))


def t_quantile(level: float, df: int) -> float:
    """The two-sided Student-t quantile: ``P(|T| <= q) = level`` (bisection, 1e-12).

    >>> round(t_quantile(0.95, 10), 4), round(t_quantile(0.95, 1000), 4)
    (2.2281, 1.9623)
    """
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > 1.0 - level:
        hi *= 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = (lo + hi) / 2.0
        if t_two_sided_p(mid, df) > 1.0 - level:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def mean_drop_ci(d: PairedDiffs, level: float = 0.95) -> tuple[float, float]:
    """Student's t interval of the mean per-example drop: ``mean +- t * sd / sqrt(n)``.

    Unbounded with fewer than two examples; a single point when every drop is equal.

    >>> [round(v, 3) for v in mean_drop_ci(PairedDiffs(n=10, before=0, after=0, mean=0.5, sd=1.0))]
    [-0.215, 1.215]
    """
    z_value(level)  # the same check of the level as every interval
    if d.n < 2:
        return -math.inf, math.inf
    half = t_quantile(level, d.n - 1) * d.sd / math.sqrt(d.n)
    return d.mean - half, d.mean + half


def paired_t_p(d: PairedDiffs) -> float:
    """Two-sided p-value of the paired t-test of "the mean drop is 0" (the test that the
    interval of :func:`mean_drop_ci` inverts: p < 1 - level exactly when it excludes 0).

    >>> round(paired_t_p(PairedDiffs(n=10, before=0, after=0, mean=0.5, sd=1.0)), 4)
    0.1483
    """
    if d.n < 2:
        return 1.0
    if d.sd == 0.0:
        return 1.0 if d.mean == 0.0 else 0.0
    stat = d.mean / (d.sd / math.sqrt(d.n))
    return min(1.0, t_two_sided_p(stat, d.n - 1))
