"""The sweep engine's memory budget and progress lines, through pytest (pytester)."""

from __future__ import annotations

import contextlib
import itertools
import json
import types
from collections.abc import Iterator
from typing import Any

import pytest
from test_plugin_early_stop import BODY, HEAD, WIDE
from tiny_source import spec

from pytest_unitablate.plugin import progress


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, dict]]:
    result = pytester.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report",
                                "r.json", "--unitablate-cache=off", *args)
    result.assert_outcomes(passed=2, failed=2)
    doc = json.loads((pytester.path / "r.json").read_text())
    (engine,) = json.loads((pytester.path / "r.run.json").read_text())["engines"]
    return result, {**{i["id"]: i for i in doc["items"]}, "engine": engine}


def test_a_small_memory_budget_splits_batches_and_keeps_every_outcome(
        tiny: pytest.Pytester) -> None:
    tiny.makepyfile(wide=WIDE)
    spec(tiny, BODY, head=HEAD)
    _, default = _run(tiny, "--unitablate-full-sweeps")
    _, small = _run(tiny, "--unitablate-full-sweeps", "--unitablate-memory-budget=300")
    keep = ("outcome", "ablated", "deciding_units", "units_evaluated")
    assert {k: [v[f] for f in keep] for k, v in default.items() if k != "engine"} == \
        {k: [v[f] for f in keep] for k, v in small.items() if k != "engine"}
    item = small["engine"]
    # the plan, or, when the naive loop measured faster on this toy, the reason naming it
    plan = item["plan"] or item["reason"].split(", with ")[1]
    examples = int(plan.split(" x ")[1].split(" ")[0])
    assert plan.startswith("1 unit(s) x ") and examples < 8, plan  # batches of 8 split
    assert "budget 300 B" in plan
    engine = default["engine"]  # the same: the plan, or the reason the loop was faster
    assert "budget 2.0 GiB" in (engine["plan"] or engine["reason"].split(", with ")[1])


@pytest.mark.parametrize("value", ["lots", "12 parsecs", "0"])
def test_a_bad_memory_budget_is_a_usage_error(tiny: pytest.Pytester, value: str) -> None:
    tiny.makepyfile(wide=WIDE)
    spec(tiny, BODY, head=HEAD)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml",
                            f"--unitablate-memory-budget={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unitablate-memory-budget*"])


def test_progress_lines_in_a_piped_log_end_at_100_and_off_silences_them(
        tiny: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "FIRST_AFTER", 0.0)  # every sweep counts as long
    monkeypatch.setattr(progress, "EVERY", 0.0)
    tiny.makepyfile(wide=WIDE)
    spec(tiny, BODY, head=HEAD)
    shown, _ = _run(tiny, "--unitablate-progress=on")
    shown.stdout.fnmatch_lines(
        ["unitablate: sweep of spec.yaml:* hidden: *% (* s, about * s left)"])
    # each target's early-stopped sweep is one series over its chunks (1, 4, 16, ...
    # units): a share of the whole layer that grows, restarting only for the next target
    # (two per check here), never once per chunk
    by_check: dict[str, list[int]] = {}
    for line in shown.outlines:
        if line.startswith("unitablate: sweep of spec.yaml:"):
            where, share = line.split(" hidden: ")
            by_check.setdefault(where, []).append(int(share.split("%")[0]))
    assert len(by_check) == 2
    for shares in by_check.values():
        restarts = sum(b < a for a, b in itertools.pairwise(shares))
        assert restarts <= 1 and max(shares) <= 100, shares
    # every series ends with its 100% line, also when early stopping decided it
    ends = [line for line in shown.outlines if ": 100%, done in " in line]
    assert len(ends) >= len(by_check), shown.outlines
    auto, _ = _run(tiny)  # pytester's output is not a terminal: a CI log gets the lines
    assert "unitablate: sweep of" in auto.stdout.str()
    assert ": 100%, done in " in auto.stdout.str()
    off, _ = _run(tiny, "--unitablate-progress=off")
    assert "unitablate: sweep of" not in off.stdout.str()


class _Capture:
    """A capture manager whose fd capture hides the terminal until suspended."""

    def __init__(self) -> None:
        self.suspended = False

    @contextlib.contextmanager
    def global_and_fixture_disabled(self) -> Iterator[None]:
        self.suspended = True
        try:
            yield
        finally:
            self.suspended = False


class _Config:
    def __init__(self, capture: _Capture, lines: list[str]) -> None:
        stream = types.SimpleNamespace(isatty=lambda: capture.suspended)
        self.writer = types.SimpleNamespace(_file=stream, line=lambda text="": lines.append(
            f"{text} (captured)" if not capture.suspended else text))
        plugins = {"capturemanager": capture, "terminalreporter": object()}
        self.pluginmanager = types.SimpleNamespace(getplugin=plugins.get)

    def get_terminal_writer(self) -> Any:
        return self.writer


def test_the_terminal_is_looked_for_and_written_to_with_capture_suspended() -> None:
    """While a test runs, fd capture points stdout at a file: asking isatty() then says no
    terminal (the bug a real pty showed), and a line written then would be swallowed."""
    capture, lines = _Capture(), []
    clock = iter(range(0, 1000, 5)).__next__
    config: Any = _Config(capture, lines)
    lines_for = progress.Progress(config, "auto", clock=clock)
    report = lines_for.for_sweep("big.yaml layer3", total=100)
    assert report is not None
    for done in (10, 40, 70):
        report(done, None)
    assert lines and all("(captured)" not in line for line in lines)
    # the clock ticks 5 s per call: shown at 5 s, then not again before 10 s more
    assert [line for line in lines if line] == [
        "unitablate: sweep of big.yaml layer3: 10% (5 s, about 45 s left)",
        "unitablate: sweep of big.yaml layer3: 70% (15 s, about 6 s left)"]
    report(100, None)  # finished: the line says so at once, whatever the throttle
    report(100, None)  # and only once
    assert [line for line in lines if line][2:] == [
        "unitablate: sweep of big.yaml layer3: 100%, done in 20 s"]
    quiet: list[str] = []  # a sweep too short to print a line prints no 100% line either
    short = progress.Progress(_Config(capture, quiet), "auto",  # type: ignore[arg-type]
                              clock=iter([0, 1]).__next__).for_sweep("x", total=10)
    assert short is not None
    short(10, None)
    assert not [line for line in quiet if line]
    worker: Any = _Config(capture, [])
    assert progress.Progress(worker, "auto", is_worker=True).for_sweep("x") is None
