"""A scan's progress: (unit, example) pairs done, shown as a tqdm bar or given to a
callback.

Example::

    tick = Progress(True, n_units=256, n_examples=597, desc="scan conv5")
    tick(597)        # one unit's worth of pairs
    tick.close()
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class Progress:
    """Counts (unit, example) pairs done and shows them: a tqdm bar (in units) or a callback."""

    def __init__(self, progress: bool | Callable[[int, int | None], None] | None,
                 n_units: int, n_examples: int | None, desc: str) -> None:
        self.callback = progress if callable(progress) else None
        self.total = n_units * n_examples if n_examples is not None else None
        self.n_examples = n_examples
        self.done = 0
        self.bar: Any = None
        if progress is False or self.callback is not None:
            return
        if progress is None and not sys.stderr.isatty():
            return
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is optional (the `scan` extra)
            return
        self.bar = tqdm(total=n_units if n_examples else None, desc=desc, unit="unit",
                        leave=False, delay=0 if progress else 2)

    def __call__(self, pairs: int) -> None:
        self.done += pairs
        if self.callback is not None:
            self.callback(self.done, self.total)
        if self.bar is not None:  # whole units' worth of pairs (no "127.5/128")
            shown = self.done // self.n_examples if self.n_examples else self.done
            if shown > self.bar.n:
                self.bar.update(shown - self.bar.n)

    def restart(self) -> None:
        """Another engine starts over (the previous one was refused)."""
        if self.done and self.bar is not None:
            self.bar.reset()
        self.done = 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


__all__ = ["Progress"]
