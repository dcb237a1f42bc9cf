"""A scan's progress: pairs counted for a callback, whole units shown on a tqdm bar (a
fake one here, recording what it was asked), and when no bar is made at all."""

from __future__ import annotations

import io
import sys
import types
from typing import Any, ClassVar

import pytest

from pytest_unitablate.core.scan.progress import Progress


class FakeBar:
    made: ClassVar[list[FakeBar]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.n = 0
        self.updates: list[int] = []
        self.resets = 0
        self.closed = False
        FakeBar.made.append(self)

    def update(self, k: int) -> None:
        self.updates.append(k)
        self.n += k

    def reset(self) -> None:
        self.resets += 1
        self.n = 0

    def close(self) -> None:
        self.closed = True


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def fake_tqdm(monkeypatch: pytest.MonkeyPatch) -> list[FakeBar]:
    module = types.ModuleType("tqdm")
    module.tqdm = FakeBar  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tqdm", module)
    FakeBar.made = []
    return FakeBar.made


def test_a_callback_gets_pairs_done_and_the_total(fake_tqdm: list[FakeBar]) -> None:
    seen: list[tuple[int, int | None]] = []
    tick = Progress(lambda done, total: seen.append((done, total)), 3, 4, "scan")
    tick(4)
    tick(3)
    assert seen == [(4, 12), (7, 12)] and tick.bar is None and fake_tqdm == []
    open_ended = Progress(lambda done, total: seen.append((done, total)), 3, None, "scan")
    open_ended(5)
    assert seen[-1] == (5, None)


def test_a_bar_shows_whole_units(fake_tqdm: list[FakeBar]) -> None:
    tick = Progress(True, n_units=3, n_examples=4, desc="scan conv5")
    (bar,) = fake_tqdm
    assert bar.kwargs == {"total": 3, "desc": "scan conv5", "unit": "unit", "leave": False,
                          "delay": 0}
    tick(3)  # not a whole unit yet
    tick(6)  # 9 pairs: two units
    tick(3)  # 12: three
    assert bar.updates == [2, 1]
    tick.restart()
    assert bar.resets == 1 and tick.done == 0
    tick.close()
    assert bar.closed and tick.bar is None
    tick.close()  # twice is fine


def test_without_a_count_of_examples_the_bar_counts_what_it_is_given(
        fake_tqdm: list[FakeBar]) -> None:
    tick = Progress(True, n_units=3, n_examples=None, desc="d")
    (bar,) = fake_tqdm
    assert bar.kwargs["total"] is None
    tick(5)
    assert bar.updates == [5]


def test_no_bar_when_off_piped_or_without_tqdm(fake_tqdm: list[FakeBar],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert Progress(False, 3, 4, "d").bar is None
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert Progress(None, 3, 4, "d").bar is None
    assert fake_tqdm == []
    monkeypatch.setattr(sys, "stderr", Tty())  # a terminal: a bar, shown after 2 s
    assert Progress(None, 3, 4, "d").bar is fake_tqdm[0]
    assert fake_tqdm[0].kwargs["delay"] == 2
    monkeypatch.setitem(sys.modules, "tqdm", None)  # not installed
    assert Progress(True, 3, 4, "d").bar is None


def test_a_restart_before_any_work_leaves_the_bar_alone(fake_tqdm: list[FakeBar]) -> None:
    tick = Progress(True, 3, 4, "d")
    tick.restart()
    assert fake_tqdm[0].resets == 0
