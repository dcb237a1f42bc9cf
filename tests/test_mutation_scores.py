"""tools/mutation_scores.py: per-module scores from the ``.meta`` files mutmut keeps."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutation_scores",
                                               ROOT / "tools" / "mutation_scores.py")
assert _spec is not None and _spec.loader is not None
scores = importlib.util.module_from_spec(_spec)
sys.modules["mutation_scores"] = scores  # dataclasses look their module up
_spec.loader.exec_module(scores)


def _meta(root: Path, path: str, codes: dict[str, int | None]) -> None:
    meta = root / (path + ".meta")
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"exit_code_by_key": codes}))


@pytest.fixture
def mutants(tmp_path: Path) -> Path:
    root = tmp_path / "mutants"
    # 9 killed (one by a timeout), 1 survivor: 90%
    _meta(root, "pytest_unitablate/engine/a.py",
          {**{f"m.a.x_f__mutmut_{i}": 1 for i in range(8)}, "m.a.x_f__mutmut_8": 36,
           "m.a.x_f__mutmut_9": 0})
    # 3 killed, 1 no test runs it: 75%
    _meta(root, "pytest_unitablate/core/b.py",
          {"m.b.x_g__mutmut_1": 1, "m.b.x_g__mutmut_2": 1, "m.b.x_g__mutmut_3": 1,
           "m.b.x_g__mutmut_4": 33})
    # partly checked: scored over the checked ones, never judged against --min
    _meta(root, "pytest_unitablate/core/c.py",
          {"m.c.x_h__mutmut_1": None, "m.c.x_h__mutmut_2": 1, "m.c.x_h__mutmut_3": 0})
    # none checked yet: no score
    _meta(root, "pytest_unitablate/core/d.py", {"m.d.x_k__mutmut_1": None})
    return root


def test_scores_per_module_count_timeouts_as_killed_and_untested_against(
        mutants: Path) -> None:
    by_path = {m.path: m for m in scores.read(mutants, [])}
    a, b = by_path["pytest_unitablate/engine/a.py"], by_path["pytest_unitablate/core/b.py"]
    assert (a.total, a.killed, a.survived, a.score) == (10, 9, 1, 90.0)
    assert (b.total, b.killed, b.no_tests, b.score) == (4, 3, 1, 75.0)
    assert b.survivors == ["m.b.x_g__mutmut_4  (no test runs it)"]
    assert by_path["pytest_unitablate/core/c.py"].score == 50.0
    assert by_path["pytest_unitablate/core/d.py"].score is None


def test_min_fails_only_on_a_checked_module_below_it(
        mutants: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert scores.main(["--mutants", str(mutants), "--min", "90"]) == 1
    err = capsys.readouterr().err
    assert "pytest_unitablate/core/b.py: 75.0% is below 90%" in err
    assert "engine/a.py" not in err and "core/c.py" not in err
    only_engine = ["--mutants", str(mutants), "--only", "pytest_unitablate/engine/*"]
    assert scores.main([*only_engine, "--min", "90"]) == 0


def test_markdown_table_and_survivor_list(mutants: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    scores.main(["--mutants", str(mutants), "--markdown", "--survivors"])
    out = capsys.readouterr().out
    assert "| `engine/a.py` | 10 | 9 | 1 | 0 | 0 | 90.0% |" in out
    assert "| `core/c.py` | 3 | 1 | 1 | 0 | 1 | 50.0% |" in out
    assert "| `core/d.py` | 1 | 0 | 0 | 0 | 1 | - |" in out
    assert "m.a.x_f__mutmut_9\n" in out


def test_no_mutants_folder_says_what_to_run(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert scores.main(["--mutants", str(tmp_path / "none")]) == 2
    assert "run `make mutate` first" in capsys.readouterr().err


def test_a_sample_draws_unchecked_mutants_per_module_and_is_scored_with_intervals(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "mutants"
    _meta(root, "pytest_unitablate/core/big.py",
          {f"m.big.x_f__mutmut_{i}": None for i in range(30)} | {"m.big.x_f__mutmut_99": 1})
    _meta(root, "pytest_unitablate/core/small.py",
          {"m.small.x_g__mutmut_1": None, "m.small.x_g__mutmut_2": 0})
    assert scores.main(["--mutants", str(root), "--sample", "10", "--seed", "7"]) == 0
    drawn = capsys.readouterr().out.split()
    big = [n for n in drawn if n.startswith("m.big.")]
    assert len(big) == 10 and len(set(big)) == 10 and "m.big.x_f__mutmut_99" not in big
    assert [n for n in drawn if n.startswith("m.small.")] == ["m.small.x_g__mutmut_1"]
    assert scores.sample(root, [], 10, 7) == drawn  # the seed fixes the draw
    assert scores.sample(root, [], 10, 8) != drawn
    assert scores.sample(root, ["*/small.py"], 10, 7) == ["m.small.x_g__mutmut_1"]
    # the sample is run: 8 of the 10 killed, 2 survive; only the named ones are scored
    codes = {f"m.big.x_f__mutmut_{i}": None for i in range(30)} | {"m.big.x_f__mutmut_99": 1}
    codes |= {name: (0 if i < 2 else 1) for i, name in enumerate(big)}
    _meta(root, "pytest_unitablate/core/big.py", codes)
    names = tmp_path / "sample.txt"
    names.write_text(" ".join(drawn) + "\n")
    assert scores.main(["--mutants", str(root), "--names", str(names), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("| score | 95% interval |")
    low, high = scores.wilson(8, 10)
    assert f"| `core/big.py` | 10 | 8 | 2 | 0 | 0 | 80.0% | {low:.0f}-{high:.0f}% |" in out
    assert "| `core/small.py` | 1 | 0 | 0 | 0 | 1 | - | - |" in out
    assert (round(low, 1), round(high, 1)) == (49.0, 94.3)


def _chunks() -> dict[str, list[str]]:
    import re

    text = (ROOT / ".ci" / "mutate").read_text()
    block = text.split("declare -A CHUNK_MODULES=(")[1].split("\n)")[0]
    return {name: body.split() for name, body in
            re.findall(r"\[([\w-]+)\]=\"([^\"]*)\"", block)}


def test_every_module_with_code_is_in_exactly_one_chunk_of_the_scheduled_job() -> None:
    """A module added to core/, engine/ or verdicts/ must get a chunk in .ci/mutate, or
    the scheduled job would never mutate it."""
    import ast

    chunked = [m for modules in _chunks().values() for m in modules]
    assert len(chunked) == len(set(chunked))
    package = ROOT / "pytest_unitablate"
    with_code = {"spec/rewrite", "plugin/schedule"}
    for part in ("core", "engine", "verdicts"):
        for path in (package / part).rglob("*.py"):
            tree = ast.parse(path.read_text())
            if any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(tree)):
                with_code.add(path.relative_to(package).with_suffix("").as_posix())
    assert set(chunked) == with_code
    order = (ROOT / ".ci" / "mutate").read_text().split("ORDER=(")[1].split(")")[0].split()
    assert sorted(order) == sorted(_chunks())
