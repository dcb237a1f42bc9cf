"""Progress lines for long layer sweeps, written to pytest's terminal (torch-free).

Output capture hides anything a test writes, so a sweep that runs for minutes (a
1,024-unit layer of a big model) would look hung. On a serial run whose terminal is a tty,
the plugin prints a line such as ``unitablate: sweep of big.yaml layer3: 40% (38 s)``
once a sweep has run for 2 s and then every 10 s, with capture suspended for the write.
``--unitablate-progress=on`` prints them on any output (a CI log), ``off`` never; xdist
workers have no terminal and print nothing.

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
        self.tty: bool | None = None

    def _enabled(self) -> bool:
        """Looked up on first use: the terminal reporter registers after this plugin."""
        if self.mode == "off":
            return False
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if reporter is None:
            return False
        self.writer = self.config.get_terminal_writer()
        if self.mode == "on":
            return True
        if self.tty is None:  # fd capture points stdout at a file while a test runs
            stream = getattr(self.writer, "_file", None)
            with self._uncaptured():
                self.tty = bool(getattr(stream, "isatty", lambda: False)())
        return self.tty

    def for_sweep(self, label: str, total: int | None = None
                  ) -> Callable[[int, int | None], None] | None:
        """A ``progress(done, total)`` callback for one sweep (``None`` when disabled);
        ``done`` and ``total`` count (unit, example) pairs; ``total`` here is used when the
        scan does not know it (data without a length)."""
        if not self._enabled():
            return None
        fallback = total
        start = self.clock()
        shown = [start + FIRST_AFTER - EVERY]

        def report(done: int, known: int | None) -> None:
            total = known if known is not None else fallback
            now = self.clock()
            finished = total is not None and done >= total
            if now - shown[0] < EVERY or (finished and shown[0] < start):
                return
            shown[0] = now
            part = f"{100 * done / total:.0f}%" if total else f"{done} unit x example pairs"
            self.write(f"unitablate: sweep of {label}: {part} ({now - start:.0f} s)")

        return report

    def _uncaptured(self) -> Any:
        capman: Any = self.config.pluginmanager.getplugin("capturemanager")
        return capman.global_and_fixture_disabled() if capman is not None else nullcontext()

    def write(self, line: str) -> None:
        assert self.writer is not None
        with self._uncaptured():
            self.writer.line()
            self.writer.line(line)
