"""The small helpers an item's verdict reads: a spec line as it is on disk now (its
end-of-line comment holds what was recorded), and how a failure names the weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_unitablate.engine.item_state import spec_line, weights_text


def test_a_spec_line_is_read_one_based_and_out_of_range_is_empty(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("first\nsecond\nthird\n", encoding="utf-8")
    assert [spec_line(str(spec), n) for n in (1, 2, 3)] == ["first", "second", "third"]
    assert spec_line(str(spec), 0) == "" and spec_line(str(spec), 4) == ""
    assert spec_line(str(tmp_path / "gone.yaml"), 1) == ""


def test_a_spec_rewritten_during_the_run_is_read_again(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("a: 1\n", encoding="utf-8")
    assert spec_line(str(spec), 1) == "a: 1"
    stat = spec.stat()
    spec.write_text("a: 2  # recorded: measured 5.0 pp\n", encoding="utf-8")
    os.utime(spec, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later write
    assert spec_line(str(spec), 1) == "a: 2  # recorded: measured 5.0 pp"


@pytest.mark.parametrize(("record", "text"), [
    ({"weights_sha256": "1a2b", "checkpoint": "c.pt"}, "sha256 1a2b (c.pt)"),
    ({"weights_sha256": "1a2b", "checkpoint": None}, "sha256 1a2b"),
    ({"weights_sha256": "1a2b"}, "sha256 1a2b"),
    ({"weights_sha256": None, "checkpoint": "c.pt"}, ""),
    ({}, ""),
])
def test_the_weights_are_named_by_hash_and_checkpoint(record: dict[str, object],
                                                      text: str) -> None:
    assert weights_text(record) == text
