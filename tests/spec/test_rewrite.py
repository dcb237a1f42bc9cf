"""Record mode's spec rewriting: comment-preserving, atomic, never stricter than the bound."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_unitablate.spec.rewrite import (
    RecordError,
    ThresholdUpdate,
    apply_updates,
    format_threshold,
    provenance_mismatches,
)

SPEC = """\
# top comment, kept
unitablate: 1   # version
model: m
data: d
checks:
  # first check
  - layer: conv5
    units: [245]
    expect:
      seven: {min_drop: 20%}   # user comment
      overall:
        max_drop: 1%  # keep me
  - layer: conv5
    any_unit:
      expect:
        3: {min_drop: null}
"""


def _updates() -> list[ThresholdUpdate]:
    return [
        ThresholdUpdate(0, None, "seven", "min_drop", 0.1234, 0.25, 0.1266),
        ThresholdUpdate(0, None, "overall", "max_drop", 0.012, 0.005, 0.007),
        ThresholdUpdate(1, "any_unit", 3, "min_drop", 0.04, 0.09, 0.05),
    ]


def test_round_trip_keeps_comments_order_and_untouched_lines(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    assert apply_updates(spec, _updates(), provenance={"torch": "2.14.1"}) == 3
    text = spec.read_text()
    for kept in ("# top comment, kept", "# version", "# first check", "# user comment",
                 "# keep me", "units: [245]"):
        assert kept in text
    # flow mappings stay flow mappings; a user's comment stays before the recorded part
    assert ("seven: {min_drop: 12.3%}   # user comment; recorded: measured 25.0 pp, "
            "margin 12.7 pp") in text
    assert "max_drop: 1.2%  # keep me; recorded: measured 0.5 pp, margin 0.7 pp" in text
    assert "3: {min_drop: 4.0%}  # recorded: measured 9.0 pp, margin 5.0 pp" in text
    assert text.index("model: m") < text.index("checks:") < text.index("provenance:")
    # Lines not touched by an update are byte-identical.
    old_lines = SPEC.splitlines()
    new_lines = text.splitlines()
    for line in old_lines:
        if "min_drop" in line or "max_drop" in line or line.strip().startswith(("seven", "3:")):
            continue
        assert line in new_lines


def test_second_identical_record_does_not_rewrite(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    apply_updates(spec, _updates(), provenance={"torch": "2.14.1"})
    before = spec.read_bytes()
    mtime = spec.stat().st_mtime_ns
    assert apply_updates(spec, _updates(), provenance={"torch": "2.14.1"}) == 0
    assert spec.read_bytes() == before
    assert spec.stat().st_mtime_ns == mtime


def test_missing_target_is_an_error_and_file_is_untouched(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    bad = ThresholdUpdate(0, None, "eight", "min_drop", 0.1, 0.2, 0.1)
    with pytest.raises(RecordError, match="eight"):
        apply_updates(spec, [bad])
    assert spec.read_text() == SPEC


def test_failed_write_leaves_original_and_no_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        apply_updates(spec, _updates())
    assert spec.read_text() == SPEC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_permissions_survive(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    spec.chmod(0o640)
    apply_updates(spec, _updates())
    assert spec.stat().st_mode & 0o777 == 0o640


@settings(deadline=None, max_examples=200)
@given(st.floats(min_value=-1.0, max_value=1.0, allow_nan=False))
def test_recorded_threshold_is_never_stricter_than_the_bound(value: float) -> None:
    low = float(format_threshold("min_drop", value).rstrip("%")) / 100
    high = float(format_threshold("max_drop", value).rstrip("%")) / 100
    assert low <= value + 1e-9
    assert high >= value - 1e-9
    assert value - low < 0.0011 and high - value < 0.0011


def test_provenance_mismatch_lines() -> None:
    assert provenance_mismatches({"torch": "1", "device": "cpu"}, {"torch": "2"}) == [
        "torch: recorded 1, now 2"
    ]
