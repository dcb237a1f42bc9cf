"""The disk cache in real runs: a second run reuses every evaluation, and nothing that
changes an outcome (weights, the model's code, the data) can be answered from it."""

from __future__ import annotations

import json
import re

import pytest
from tiny_source import ALL_ENGINES as BODY
from tiny_source import spec

# The tiny model whose hidden units 1 and 2 swap roles when swap.txt says so (new weights,
# same code): unit 1 then carries class two, and "unit 1 carries class one" must fail.
SWAPPABLE = '''
from pathlib import Path
import torch
import tinymodel

def model():
    m = tinymodel.Tiny().eval()
    if Path("swap.txt").exists() and Path("swap.txt").read_text().strip() == "1":
        with torch.no_grad():
            m.hidden.weight.copy_(torch.eye(4)[[0, 2, 1, 3]])
            m.head.weight.copy_(torch.eye(4)[:, [0, 2, 1, 3]])
    return m
'''


@pytest.fixture
def swappable(tiny: pytest.Pytester) -> pytest.Pytester:
    tiny.makepyfile(swappable=SWAPPABLE)
    spec(tiny, BODY, head=_head())
    return tiny


def _head(model: str = "swappable:model", data: str = "tinymodel:data") -> str:
    return (f"unitablate: 1\nmodel: {model}\ndata: {data}\n"
            f"classes: [zero, one, two, three]\n")


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, int]]:
    result = pytester.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-summary=table",
                                "--unitablate-report", "r.json", *args)
    line = re.search(r"unitablate cache: (\d+) reused, (\d+) computed", result.stdout.str())
    stats = {"reused": int(line.group(1)), "computed": int(line.group(2))} if line else {}
    return result, stats


def _report(pytester: pytest.Pytester) -> list[dict[str, object]]:
    items = json.loads((pytester.path / "r.json").read_text())["items"]
    assert isinstance(items, list)
    return items


def test_a_second_run_reuses_every_evaluation_and_reports_the_same(
        swappable: pytest.Pytester) -> None:
    first, stats1 = _run(swappable)
    first.assert_outcomes(passed=4)
    report1 = _report(swappable)
    second, stats2 = _run(swappable)
    second.assert_outcomes(passed=4)
    assert stats1["reused"] == 0 and stats1["computed"] > 0
    assert stats2 == {"reused": stats1["computed"], "computed": 0}
    assert _report(swappable) == report1
    assert list((swappable.path / ".pytest_cache" / "d" / "unitablate").glob("*.npz"))


def test_new_weights_are_never_answered_from_the_cache(swappable: pytest.Pytester) -> None:
    _run(swappable)[0].assert_outcomes(passed=4)
    (swappable.path / "swap.txt").write_text("1")
    result, stats = _run(swappable)
    result.assert_outcomes(passed=3, failed=1)  # unit 1 no longer carries class one
    result.stdout.fnmatch_lines(["*hidden-u1-one-min_drop*"])
    assert stats["computed"] > 0


def test_an_edited_model_source_is_never_answered_from_the_cache(
        swappable: pytest.Pytester) -> None:
    _run(swappable)[0].assert_outcomes(passed=4)
    source = swappable.path / "tinymodel.py"
    # same weights, new code: the forward now drops hidden unit 1's signal
    source.write_text(source.read_text().replace(
        "return self.head(self.hidden(x))",
        "return self.head(self.hidden(x) * torch.tensor([1.0, 0.0, 1.0, 1.0]))"))
    result, stats = _run(swappable)
    assert stats["computed"] > 0
    result.assert_outcomes(failed=1, passed=3)  # class one is never right at baseline now


def test_other_data_is_never_answered_from_the_cache(swappable: pytest.Pytester) -> None:
    _run(swappable)[0].assert_outcomes(passed=4)
    swappable.makepyfile(otherdata='''
import torch
def data():
    labels = torch.arange(4).repeat(5)   # half the examples: other data, same shapes
    return [(torch.eye(4)[labels], labels)]
''')
    spec(swappable, BODY, head=_head(data="otherdata:data"))
    result, stats = _run(swappable)
    result.assert_outcomes(passed=4)
    assert stats["reused"] == 0
    assert {item["n"] for item in _report(swappable) if item["target"] == "one"} == {5}


def test_off_and_cache_clear_bypass_it(swappable: pytest.Pytester) -> None:
    result, stats = _run(swappable, "--unitablate-cache=off")
    result.assert_outcomes(passed=4)
    assert stats == {} and not (swappable.path / ".pytest_cache" / "d" / "unitablate").exists()
    (swappable.path / "pytest.ini").write_text("[pytest]\nunitablate_cache = off\n")
    assert _run(swappable)[1] == {}
    (swappable.path / "pytest.ini").unlink()
    _run(swappable)
    result, stats = _run(swappable, "--cache-clear")
    result.assert_outcomes(passed=4)
    assert stats["reused"] == 0


def test_damaged_entries_are_recomputed(swappable: pytest.Pytester) -> None:
    _run(swappable)
    folder = swappable.path / ".pytest_cache" / "d" / "unitablate"
    for path in folder.glob("*.npz"):
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    result, again = _run(swappable)
    result.assert_outcomes(passed=4)
    assert again["reused"] == 0
    assert "unusable entries recomputed" in result.stdout.str()


def test_a_bad_cache_option_is_a_usage_error(swappable: pytest.Pytester) -> None:
    (swappable.path / "pytest.ini").write_text("[pytest]\nunitablate_cache = maybe\n")
    result = swappable.runpytest("--unitablate-spec", "spec.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unitablate_cache must be on or off, got 'maybe'*"])




def test_a_cache_directory_that_cannot_be_one_turns_the_cache_off_with_a_warning(
        swappable: pytest.Pytester) -> None:
    """pytest itself only warns about such a cache_dir; the plugin ran into an
    INTERNALERROR (exit 3) before any test. Now: one warning, the same outcomes."""
    _run(swappable, "--unitablate-cache=off")[0].assert_outcomes(passed=4)
    expected = _report(swappable)
    (swappable.path / "not-a-folder").write_text("a file")
    result, stats = _run(swappable, "-o", "cache_dir=not-a-folder/cache")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=4)
    assert stats == {}  # no cache line with counts
    result.stdout.fnmatch_lines(["*the evaluation cache is off for this run*"])
    assert _report(swappable) == expected
