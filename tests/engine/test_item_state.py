"""The small helpers an item's verdict reads: a spec line as it is on disk now (its
end-of-line comment holds what was recorded), and how a failure names the weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_unitablate.engine.item_state import next_step, spec_line, weights_text


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


@pytest.mark.parametrize(("message", "status", "step"), [
    ("headline\n  details\n  To re-record: pytest --x\n", "failed", "To re-record: pytest --x"),
    ("one line", "failed", "one line"),
    ("", "failed", None),
    ("headline\n   \n", "failed", "headline"),
    # a problem: fix the spec line it names (the first located line), not its last line
    ("layer 'conv9' is unknown\nspecs/a b.yaml:4: no layer 'conv9' in the model\n"
     "  the layers: conv1, conv2", "error", "fix the spec at specs/a b.yaml:4"),
    ("s.yaml:4: : no layer", "error", "fix the spec at s.yaml:4"),
    ("a problem with no location\n  look at it", "error", None),
    # an error's last line is not a next step; a failure's located line is not one either
    ("s.yaml:7: hidden-u0-zero-min_drop: missed\n  To re-record: pytest", "failed",
     "To re-record: pytest"),
])
def test_the_next_step_of_a_failure_and_of_a_problem(message: str, status: str,
                                                     step: str | None) -> None:
    assert next_step(message, status) == step
