"""Progress lines for long layer sweeps, written to pytest's terminal (torch-free).

Output capture hides anything a test writes, so a sweep that runs for minutes (a
1,024-unit layer of a big model) would look hung. On a serial run whose terminal is a tty,
the plugin prints a line such as ``unitablate: sweep of big.yaml layer3: 40% (38 s, about
57 s left)`` once a sweep has run for 2 s and then every 10 s, with capture suspended for
the write: one share of the whole layer, also when early stopping sweeps it in chunks.
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
        #: per sweep label: when it started, when a line was last shown, pairs done so far
        self._sweeps: dict[str, dict[str, Any]] = {}

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
        """A ``progress(done, total)`` callback for one sweep (``None`` when disabled).

        ``total`` counts the (unit, example) pairs of the whole layer; a layer swept in
        chunks (early stopping) asks for a callback per chunk under the same ``label``, and
        the lines continue from the chunks before, with one share of the whole layer and an
        estimate of the time left, instead of restarting at 0% per chunk. ``done`` counts
        within the chunk; the scan's own total is used when ``total`` is not given."""
        if not self._enabled():
            return None
        state = self._sweeps.get(label)
        if (state is None or total is None or state["total"] != total
                or state["done"] >= total):
            start = self.clock()
            state = {"start": start, "shown": start + FIRST_AFTER - EVERY, "done": 0,
                     "total": total}
            self._sweeps[label] = state
        last = [0]

        def report(done: int, known: int | None) -> None:
            state["done"] += done - last[0]
            last[0] = done
            whole = state["total"] if state["total"] is not None else known
            now = self.clock()
            finished = whole is not None and state["done"] >= whole
            if now - state["shown"] < EVERY or (finished and state["shown"] < state["start"]):
                return
            state["shown"] = now
            elapsed = now - state["start"]
            if whole:
                share = min(1.0, state["done"] / whole)  # chunks of two checks may overlap
                left = (f", about {elapsed * (1 - share) / share:.0f} s left"
                        if 0 < share < 1 else "")
                part = f"{100 * share:.0f}% ({elapsed:.0f} s{left})"
            else:
                part = f"{state['done']} unit x example pairs ({elapsed:.0f} s)"
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
