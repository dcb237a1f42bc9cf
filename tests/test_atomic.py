"""Atomic writes: a new file gets the user's umask, an existing one keeps its bits."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pytest_unitablate.atomic import atomic_write


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_new_file_follows_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "report.json", "{}\n")
        with open(tmp_path / "plain.json", "w") as fh:  # what the user's own tools give
            fh.write("{}\n")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "report.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o666 & ~umask


def test_an_existing_file_keeps_its_bits_and_no_temp_is_left(tmp_path: Path) -> None:
    target = tmp_path / "spec.yaml"
    target.write_text("old\n")
    target.chmod(0o640)
    atomic_write(target, "new\n")
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["spec.yaml"]


def test_files_written_together_are_all_put_back_when_one_cannot_be_moved(
        tmp_path: Path) -> None:
    from pytest_unitablate.atomic import atomic_write_all

    spec, new, blocked = tmp_path / "spec.yaml", tmp_path / "new.json", tmp_path / "dir"
    spec.write_text("old\n")
    spec.chmod(0o640)
    (blocked / "inside").mkdir(parents=True)  # a non-empty directory: replace fails
    with pytest.raises(OSError):
        atomic_write_all([(spec, "new\n"), (new, "{}\n"), (blocked, "x\n")])
    assert spec.read_text() == "old\n" and stat.S_IMODE(spec.stat().st_mode) == 0o640
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "spec.yaml"]
