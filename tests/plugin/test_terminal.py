"""What the terminal shows: a failure's first line fits pytest's short summary, a missing
layer is reported as missing whatever else is wrong, the table says when nothing matched,
and items are not called checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tiny_source import spec

from pytest_unitablate.verdicts.records import format_table

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

MISSES = """\
checks:
  - layer: hidden
    units: [3]
    expect:
      three: {min_drop: 20%}
"""


def _summary_shows(result: pytest.RunResult, item: str, headline: str) -> None:
    """The failure's first line is ``headline``, and pytest's short summary shows it
    (pytest 9 shows the first line of a plain-text failure there; older ones only the
    node id, which is accepted before pytest 9)."""
    lines = result.outlines
    section = next(i for i, line in enumerate(lines) if line.strip("_ ").startswith(item))
    assert lines[section + 1] == headline
    summary = [line for line in lines if line.startswith(f"FAILED spec.yaml::{item}")]
    assert summary
    if pytest.version_tuple >= (9,) or " - " in summary[0]:
        assert summary[0] == f"FAILED spec.yaml::{item} - {headline}"


def test_the_short_summary_shows_the_measured_and_the_needed_drop(tiny: pytest.Pytester,
                                                                   monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    monkeypatch.setenv("CI", "true")  # pytest does not cut summary lines on CI
    spec(tiny, MISSES)
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "-rf")
    _summary_shows(result, "hidden-u3-three-min_drop",
                   "hidden-u3 three: drop 0.0 pp, needs >= 20.0 pp")


def test_a_missing_layer_is_reported_whatever_else_is_wrong(tiny: pytest.Pytester,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    # the 95% lower bound of a class drop cannot reach 99% with this many examples: the
    # threshold is unsupportable, but the layer does not exist, which is what to fix first
    monkeypatch.setenv("CI", "true")
    spec(tiny, """\
checks:
  - layer: hiddn
    units: [3]
    expect:
      three: {min_drop: 99%, confidence: 95%}
""")
    result = tiny.runpytest("--unitablate-spec", "spec.yaml", "-rf")
    text = result.stdout.str()
    assert "even if every one were lost" not in text
    _summary_shows(result, "hiddn-u3-three-min_drop", "model Tiny has no layer 'hiddn'")
    result.stdout.fnmatch_lines(["spec.yaml:6: model Tiny has no layer 'hiddn'; did you "
                                 "mean 'hidden'*"])


def test_the_table_says_when_no_unit_matched() -> None:
    base = {"layer": "layer3.0", "target": "six", "baseline": 1.0, "ablated": 1.0,
            "drop": 0.0, "constraint": "min_drop", "threshold": 0.4, "outcome": "failed",
            "min_similarity": 0.75}
    table = format_table([
        {**base, "units": [15], "matched_units": [10], "similarity": [0.73]},
        {**base, "units": [10], "matched_units": [3], "similarity": [0.91]},
    ])
    assert re.search(r"layer3\.0\s+15->none\s+six", table)
    assert re.search(r"layer3\.0\s+10->3\s+six", table)


def test_demo_spec_comments_write_drops_as_positive_numbers() -> None:
    """A drop is positive when the ablation hurts (the README's definition); the comments
    that give the measured drops behind each threshold say so too."""
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            comment = line.partition("#")[2]
            assert not re.search(r"(?<![\w-])-\d+(\.\d+)?\b", comment), f"{path.name}:{n}"


def test_discover_takes_the_confidence_as_a_spec_writes_it() -> None:
    from pytest_unitablate.cli import _parser

    args = _parser().parse_args(["discover", "--model", "m:f", "--data", "d:f", "--layer",
                                 "x", "--out", "s.yaml", "--confidence", "90%"])
    assert args.confidence == 0.9


def test_a_threshold_record_mode_refuses_is_not_sent_back_to_record_mode(
        tiny: pytest.Pytester) -> None:
    """Unit 3 carries no class zero: record mode refuses any min_drop (it could never fail),
    and a plain run then says so instead of pointing at record mode again."""
    spec(tiny, """\
checks:
  - layer: hidden
    units: [3]
    expect:
      zero: {min_drop: null}
""")
    recorded = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-record-mode=new")
    recorded.stdout.fnmatch_lines(["*hidden-u3 does not carry class 'zero'*not recorded*"])
    plain = tiny.runpytest("--unitablate-spec", "spec.yaml")
    plain.assert_outcomes(failed=1)
    text = plain.stdout.str()
    assert "does not carry class 'zero'" in text and "Remove this check" in text
    assert "To record it" not in text
