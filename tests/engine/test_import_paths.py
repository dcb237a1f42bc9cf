"""``call_import_path``: ``package.module:attr.attr`` imported and called, each problem
located and worded; a pytest fixture recognised in every pytest's way of marking one."""

from __future__ import annotations

import pathlib
import sys
import types
from collections.abc import Iterator

import pytest

from pytest_unitablate.engine.refs import (
    References,
    Subject,
    _is_pytest_fixture,
    call_import_path,
)
from pytest_unitablate.errors import ItemProblem


@pytest.fixture
def module() -> Iterator[types.ModuleType]:
    mod = types.ModuleType("ua_paths_mod")
    mod.factory = lambda: "built"  # type: ignore[attr-defined]
    mod.holder = types.SimpleNamespace(inner=types.SimpleNamespace(make=lambda: "deep"))  # type: ignore[attr-defined]
    mod.value = 3  # type: ignore[attr-defined]

    def broken() -> None:
        raise RuntimeError("weights missing")

    mod.broken = broken  # type: ignore[attr-defined]
    sys.modules["ua_paths_mod"] = mod
    yield mod
    del sys.modules["ua_paths_mod"]


def test_a_nested_attribute_is_followed_and_called(module: types.ModuleType) -> None:
    assert call_import_path("ua_paths_mod:factory", "model", "s.yaml:2") == "built"
    assert call_import_path("ua_paths_mod:holder.inner.make", "model", "s.yaml:2") == "deep"


@pytest.mark.parametrize(("ref", "text", "cause"), [
    ("ua_paths_mod:nothing", "s.yaml:2: model 'ua_paths_mod:nothing': module "
                             "'ua_paths_mod' has no attribute 'nothing'", "spec"),
    ("ua_paths_mod:holder.none", "s.yaml:2: model 'ua_paths_mod:holder.none': module "
                                 "'ua_paths_mod' has no attribute 'holder.none'", "spec"),
    ("ua_paths_mod:value", "s.yaml:2: model 'ua_paths_mod:value' is not callable", "spec"),
    # the module is what comes before the first colon
    ("ua_paths_mod:holder:x", "s.yaml:2: model 'ua_paths_mod:holder:x': module "
                              "'ua_paths_mod' has no attribute 'holder:x'", "spec"),
    ("ua_paths_mod:broken", "s.yaml:2: model 'ua_paths_mod:broken' raised RuntimeError: "
                            "weights missing", "model"),
    ("ua_no_such_module_here:f", "s.yaml:2: model 'ua_no_such_module_here:f': cannot import "
                                 "'ua_no_such_module_here': ModuleNotFoundError: No module "
                                 "named 'ua_no_such_module_here'", "spec"),
])
def test_each_problem_is_located_and_says_whose_it_is(module: types.ModuleType, ref: str,
                                                     text: str, cause: str) -> None:
    with pytest.raises(ItemProblem) as info:
        call_import_path(ref, "model", "s.yaml:2")
    assert str(info.value) == text
    assert info.value.cause == cause


def test_a_pytest_fixture_is_recognised_however_pytest_marked_it() -> None:
    @pytest.fixture
    def real() -> int:
        return 1

    assert _is_pytest_fixture(real)  # this pytest's own way
    FixtureFunctionDefinition = type("FixtureFunctionDefinition", (), {})  # pytest >= 8.4
    assert _is_pytest_fixture(FixtureFunctionDefinition())

    def old() -> None: ...

    old._pytestfixturefunction = object()  # type: ignore[attr-defined]  # pytest < 8.4
    assert _is_pytest_fixture(old)

    def older() -> None: ...

    older._fixture_function_marker = object()  # type: ignore[attr-defined]
    assert _is_pytest_fixture(older)

    def plain() -> None: ...

    assert not _is_pytest_fixture(plain)
    assert not _is_pytest_fixture(type("fixturefunctiondefinition", (), {})())


def test_a_subject_groups_its_ranking_data_only_when_asked() -> None:
    class Grouped:
        def group_ids(self) -> list[int]:
            return [0, 1]

    subject = Subject(model=None, data=[1, 2], ranking=Grouped())
    assert subject.group_ids() is None
    assert subject.group_ids(ranking=True) == [0, 1]


def test_a_name_without_names_to_look_it_up_in_is_refused_at_its_line() -> None:
    """``Engine.bind(spec, None)``: no fixtures, so a name is not an import path."""
    with pytest.raises(ItemProblem) as raised:
        References().resolve("model", "model", 2, where="s.yaml", lookup=None)
    assert str(raised.value) == ("s.yaml:2: model 'model' is not an import path "
                                 "'package.module:callable' and no names were given")


def test_a_failing_fixture_is_shown_from_the_fixture_on() -> None:
    """A lookup that raises for a known name (a fixture that fails) goes through
    untouched, and pytest's traceback hides the frame that called it."""
    def lookup(name: str) -> object:
        raise RuntimeError(f"fixture {name} broke")

    with pytest.raises(RuntimeError, match="fixture model broke") as raised:
        References().resolve("model", "model", 2, where="s.yaml", lookup=lookup)
    shown = [str(entry.statement).strip() for entry in raised.traceback.filter(raised)]
    assert "return lookup(ref)" not in shown, shown
    assert any("raise RuntimeError" in line for line in shown), shown


def test_a_failing_fixture_is_shown_from_the_fixture_on_through_bind(
        tmp_path: pathlib.Path) -> None:
    """``Engine.bind`` (and its resolving helper) hide their frames too: a fixture that
    fails while the engine binds a spec is shown from the fixture on."""
    from pytest_unitablate.engine.engine import Engine
    from pytest_unitablate.spec.loader import load_spec

    path = tmp_path / "s.yaml"
    path.write_text("unitablate: 1\nmodel: model\ndata: data\nchecks:\n  - layer: fc\n"
                    "    units: [0]\n    expect: {overall: {max_drop: 100%}}\n")

    def lookup(name: str) -> object:
        raise RuntimeError(f"fixture {name} broke")

    with pytest.raises(RuntimeError, match="fixture model broke") as raised:
        Engine().bind(load_spec(path), lookup)
    shown = [str(entry.statement).strip() for entry in raised.traceback.filter(raised)]
    assert not [line for line in shown if "resolve(" in line], shown
    assert any("raise RuntimeError" in line for line in shown), shown
