"""The spec loader against a corpus of malformed and good specs.

Each bad spec's first line says ``# expect: LINE: substring``: loading must fail with a
problem located at LINE whose message contains the substring.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_unitablate.errors import SpecError
from pytest_unitablate.spec.ids import item_ids
from pytest_unitablate.spec.loader import is_spec_file, load_spec

CORPUS = Path(__file__).parent / "corpus"
BAD = sorted((CORPUS / "bad").glob("*.yaml"))


def test_corpus_is_large_enough() -> None:
    assert len(BAD) >= 25


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_spec_gives_its_located_readable_error(path: Path) -> None:
    header = path.read_text().splitlines()[0]
    match = re.match(r"# expect: (\d+): (.+)$", header)
    assert match, f"{path.name} lacks its '# expect: LINE: text' header"
    line, text = int(match.group(1)), match.group(2)
    before = path.read_bytes()
    with pytest.raises(SpecError) as info:
        load_spec(path)
    problems = info.value.problems
    assert any(p.line == line and text in p.message for p in problems), "\n".join(
        map(str, problems))
    rendered = str(info.value)
    assert f"{path}:{line}: " in rendered
    assert "Traceback" not in rendered
    assert path.read_bytes() == before


def test_many_problems_are_reported_at_once() -> None:
    text = """unitablate: 3
model: m
data: d
classes: [a, b]
checks:
  - layer: conv5
    units: [-1]
    expect:
      c: {min_drop: 20}
  - layer: conv5
    unitz: [1]
"""
    with pytest.raises(SpecError) as info:
        load_spec("many.yaml", text=text)
    lines = sorted({p.line for p in info.value.problems})
    assert lines == [1, 7, 9, 10, 11]


def test_python_tag_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f"""unitablate: 1
model: !!python/object/apply:os.system ["touch {marker}"]
data: d
checks: [{{layer: c, units: [0], expect: {{overall: {{max_drop: 1%}}}}}}]
"""
    with pytest.raises(SpecError, match="is not allowed"):
        load_spec("evil.yaml", text=text)
    assert not marker.exists()


def test_good_spec_round_trips_into_the_model() -> None:
    spec = load_spec(CORPUS / "good" / "full.yaml")
    assert spec.classes is not None and len(spec.classes) == 10
    assert spec.min_examples == 10 and spec.ranking_data == "unitablate_demo.fixtures:ranking_data"
    modes = [c.mode for c in spec.checks]
    assert modes == ["units", "units", "any_unit", "every_unit", "top_units", "units"]
    first = spec.checks[0]
    assert first.units == (245,) and first.line == 11 and first.layer_line == 11
    seven = first.expectations[0]
    assert seven.target == "seven" and seven.constraints[0].threshold == pytest.approx(0.2)
    assert seven.constraints[0].line == 14
    second = spec.checks[1]
    assert second.ablation is not None and second.ablation.kind == "mean"
    assert [m.name for m in second.marks] == ["xfail", "skipif"]
    rel = second.expectations[0].constraints[0]
    assert rel.kind == "min_relative_drop" and rel.confidence == pytest.approx(0.95)
    assert rel.warn_margin == pytest.approx(0.02)
    assert spec.checks[2].at_least == 2 and spec.checks[2].name == "conv5-seven-any"
    top = spec.checks[4]
    assert top.top_units == 20 and top.top_class == "seven"
    assert top.ablation is not None and top.ablation.value == 0.5
    assert spec.checks[5].units == (7,)
    assert spec.checks[5].expectations[0].constraints[0].threshold is None
    ids = [k.id for k in item_ids(spec)]
    assert ids == [
        "conv5-u245-seven-min_drop",
        "conv5-u245-overall-max_drop",
        "conv5-u3+17:mean-two-min_relative_drop",
        "conv5-seven-any-seven-min_drop",
        "conv5-every-overall-max_drop",
        "conv5-top20-seven:const0.5-seven-min_drop",
        "conv5-top20-seven:const0.5-overall-max_drop",
        "conv4-u7-nine-min_drop",
    ]


def test_demo_specs_load() -> None:
    root = Path(__file__).parents[2]
    for path in sorted((root / "specs").glob("*.yaml")):
        assert is_spec_file(path)
        assert item_ids(load_spec(path))


def test_is_spec_file_is_cheap_and_strict(tmp_path: Path) -> None:
    other = tmp_path / "ci.yaml"
    other.write_text("jobs: {}\n")
    assert not is_spec_file(other)
    assert not is_spec_file(tmp_path / "missing.yaml")
    txt = tmp_path / "spec.txt"
    txt.write_text("unitablate: 1\n")
    assert not is_spec_file(txt)


def test_loader_does_not_import_torch() -> None:
    code = ("import sys; from pytest_unitablate.spec.loader import load_spec; "
            "import pytest_unitablate.plugin, pytest_unitablate.plugin.item; "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('torch', 'numpy')))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_problem_on_a_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("unitablate: 1\nmodel: m\ndata: d\nchecks:\n  - layer: conv5\n"
                    "    units: [1]\n    expect:\n      seven: {min_drop: 20}\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    messages = [p.message for p in info.value.problems if p.line == 8]
    assert any("no 'classes:' list" in m for m in messages)
    assert any("bare number (20)" in m for m in messages)


def test_num_heads_may_be_set_once_for_the_spec_and_a_check_overrides_it() -> None:
    spec = load_spec(CORPUS / "good" / "spec_level_num_heads.yaml")
    first, second = spec.checks
    assert (spec.num_heads_for(first), spec.num_heads_for(second)) == (12, 6)
    assert spec.unit_for(first) == "head"
    text = (CORPUS / "good" / "spec_level_num_heads.yaml").read_text()
    with pytest.raises(SpecError, match="num_heads is for a check with unit: head"):
        load_spec("channel.yaml", text=text.replace("unit: head\nnum_heads: 12\n", ""))
