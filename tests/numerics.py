"""The test suite's one policy for comparing floats computed two ways.

Two float32 computations of the same value (another BLAS, another thread count, another
summation order, a network split in two) differ by rounding alone. For a sum of ``n``
float32 terms in any order the error is at most ``gamma(n) * sum(|terms|)`` with
``gamma(n) = n u / (1 - n u)`` and ``u = 2**-24`` the unit roundoff (Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., eq. 3.4-3.5). Both sides carry such an error,
and a network stacks ``depth`` sums (each layer's products summed, its rounding passed on
through a Lipschitz-ish map), so the tolerance for a value of size ``magnitude`` is

    2 * depth * gamma(terms) * magnitude

where ``terms`` is the longest sum in one layer (a Linear's ``in_features``, a
convolution's ``in_channels * kh * kw``) and ``magnitude`` the size of what was summed
(the sum of absolute terms; a value's own size is a fair stand-in for well-scaled
networks). It is a bound, not a guess: a comparison that needs more says something real.

Rules the suite keeps (CONTRIBUTING): float results are compared with these helpers, never
with a bare ``1e-6`` (a tighter tolerance says why it is exact: ``# exact: same ops``); no
fixture relies on an exact tie (two units with equal profiles,
two classes with equal logits) whose winner the rounding decides; and no test asserts on
the wall clock (count calls instead: ``tests/test_hygiene.py`` enforces it).

Example::

    >>> f32_tolerance(terms=64, magnitude=10.0)   # one Linear(64, .) of unit-size inputs
    7.6294...e-05
    >>> f32_tolerance(terms=64, magnitude=10.0, depth=3) > f32_tolerance(terms=64,
    ...                                                                 magnitude=10.0)
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The unit roundoff of float32 (round to nearest).
U32 = 2.0 ** -24


def gamma(n: int, u: float = U32) -> float:
    """Higham's ``gamma_n``: the relative error bound of a sum of ``n`` terms."""
    if n * u >= 1:
        raise ValueError(f"{n} terms are too many for a float32 error bound")
    return n * u / (1 - n * u)


def f32_tolerance(terms: int, magnitude: float = 1.0, depth: int = 1) -> float:
    """Absolute tolerance between two float32 computations of one value: ``depth``
    stacked sums of at most ``terms`` terms each, over values of size ``magnitude``."""
    return 2.0 * max(1, depth) * gamma(max(1, terms)) * max(float(magnitude), 1e-30)


def assert_f32_close(actual: Any, expected: Any, *, terms: int, depth: int = 1,
                     magnitude: float | None = None) -> None:
    """``actual`` equals ``expected`` within :func:`f32_tolerance`; ``magnitude`` defaults
    to the largest absolute value of either (arrays, tensors or numbers)."""
    a = np.asarray(_numpy(actual), dtype=np.float64)
    b = np.asarray(_numpy(expected), dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} and {b.shape}")
    if magnitude is None:
        magnitude = float(max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1.0))
    tol = f32_tolerance(terms, magnitude, depth)
    worst = float(np.abs(a - b).max(initial=0.0))
    if not worst <= tol:
        raise AssertionError(f"differ by {worst:.3g}, more than the float32 bound {tol:.3g} "
                             f"({depth} sum(s) of {terms} terms, magnitude {magnitude:.3g})")


def _numpy(value: Any) -> Any:
    detach = getattr(value, "detach", None)
    return detach().cpu().numpy() if callable(detach) else value


__all__ = ["U32", "assert_f32_close", "f32_tolerance", "gamma"]
