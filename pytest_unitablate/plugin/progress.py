"""Progress lines for long layer sweeps, written to pytest's terminal (torch-free).

Output capture hides anything a test writes, so a sweep that runs for minutes (a
1,024-unit layer of a big model) would look hung, in a terminal and in a CI log alike. On a
serial run the plugin prints a line such as ``unitablate: sweep of big.yaml layer3: 40%
(38 s, about 57 s left)`` once a sweep has run for 2 s and then at least every 10 s, with
capture suspended for the write: one share of the whole layer, also when early stopping
sweeps it in chunks. A sweep that printed a line ends with one at 100% (``done in 17
s``), so the scrollback never stops at 43%. Lines are plain (no carriage returns), so a
piped log reads the same as a terminal. ``--unitablate-progress=off`` prints nothing;
``on`` is ``auto``; xdist workers have no terminal and print nothing.

Example::

    lines = Progress(config, "auto").for_sweep("layer3 of big.yaml")
    scan(model, data, "layer3", progress=lines)   # called as lines(done, total)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pytest

FIRST_AFTER = 2.0  # seconds before the first line
EVERY = 10.0  # seconds between lines


class Progress:
    """Makes per-sweep callbacks that write throttled lines to the terminal."""

    def __init__(self, config: pytest.Config, mode: str, *, is_worker: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.mode = "off" if is_worker else mode
        self.writer: Any = None

    def _enabled(self) -> bool:
        """Looked up on first use: the terminal reporter registers after this plugin."""
        if self.mode == "off":
            return False
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if reporter is None:
            return False
        self.writer = self.config.get_terminal_writer()
        return True

    def for_sweep(self, label: str, total: int | None = None
                  ) -> Callable[[int, int | None], None] | None:
        """A ``progress(done, total)`` callback for one sweep (``None`` when disabled).

        ``total`` counts the (unit, example) pairs of the whole layer and ``done`` those
        finished so far; the engine reports an early-stopped sweep's chunks as one series
        (one share of the whole layer, one estimate of the time left) instead of
        restarting at 0% per chunk. The scan's own total is used when ``total`` is not
        given."""
        if not self._enabled():
            return None
        start = self.clock()
        shown = [start + FIRST_AFTER - EVERY]
        ended = [False]

        def report(done: int, known: int | None) -> None:
            whole = total if total is not None else known
            now = self.clock()
            finished = whole is not None and done >= whole
            printed = shown[0] >= start  # a line of this sweep is on the screen
            if ended[0]:
                return
            if finished and printed:  # end what was started: the last line says 100%
                ended[0] = True
                self.write(f"unitablate: sweep of {label}: 100%, done in {now - start:.0f} s")
                return
            if now - shown[0] < EVERY or finished:
                return
            shown[0] = now
            elapsed = now - start
            if whole:
                share = min(1.0, done / whole)
                left = (f", about {elapsed * (1 - share) / share:.0f} s left"
                        if 0 < share < 1 else "")
                part = f"{100 * share:.0f}% ({elapsed:.0f} s{left})"
            else:
                part = f"{done} unit x example pairs ({elapsed:.0f} s)"
            self.write(f"unitablate: sweep of {label}: {part}")

        return report

    def _uncaptured(self) -> Any:
        capman: Any = self.config.pluginmanager.getplugin("capturemanager")
        return capman.global_and_fixture_disabled() if capman is not None else nullcontext()

    def write(self, line: str) -> None:
        assert self.writer is not None
        with self._uncaptured():
            self.writer.line()
            self.writer.line(line)
