"""The test item of one spec constraint: it binds fixtures to the engine and the engine's
result to pytest (torch-free at import).

The item is a real ``pytest.Function`` built with the public
``Function.from_parent(..., callobj=...)`` constructor, so the spec's model and data
fixtures resolve through pytest's own fixture machinery (custom ``Item`` subclasses get no
fixtures: pytest#2471, #3639). It measures and judges nothing itself: at setup it hands
the engine a lookup of fixture values (:meth:`Engine.bind
<pytest_unitablate.engine.engine.Engine.bind>`), at call it asks the engine to judge the
item and turns the result into pytest's outcome, warnings and report fields.

Example (what pytest does with it)::

    item = UnitAblateItem.from_parent(spec_file, name=key.id, callobj=run_spec_item)
    item.setup_spec(spec, key)      # marks and the static JSON-report fields
    item.setup()                    # fixtures -> engine.bind(spec, lookup)
    item.runtest()                  # -> run_spec_item(request) -> engine.run_item(...)
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_unitablate.errors import ItemProblem
from pytest_unitablate.plugin.report import junit_properties
from pytest_unitablate.plugin.state import UnitAblateWarning, get_state
from pytest_unitablate.spec.ids import ItemKey
from pytest_unitablate.spec.model import Spec
from pytest_unitablate.verdicts.failure import problem_text
from pytest_unitablate.verdicts.records import static_record


class ThresholdMiss(Exception):
    """A failed expectation: an ordinary test failure with a readable message."""


def run_spec_item(request: pytest.FixtureRequest) -> None:
    """The test function of every spec item; the item itself does the work."""
    item = request.node
    assert isinstance(item, UnitAblateItem)
    item.run_check()


def fixture_lookup(request: pytest.FixtureRequest, spec: Spec) -> Any:
    """The engine's lookup of names: pytest fixtures visible from the item. An unknown
    name is the engine's located error; a fixture that fails is pytest's setup error."""
    from pytest_unitablate.engine.refs import UnknownName

    def lookup(name: str) -> Any:
        __tracebackhide__ = True
        try:
            return request.getfixturevalue(name)
        except Exception as exc:
            if type(exc).__name__ != "FixtureLookupError":
                raise
            raise UnknownName(name, f"no fixture of that name is visible from {spec.path} "
                                    f"(define it in a conftest.py above the spec, or use "
                                    f"'package.module:callable')") from None

    return lookup


class UnitAblateItem(pytest.Function):
    """One constraint of one target of one check."""

    spec: Spec
    key: ItemKey

    def setup_spec(self, spec: Spec, key: ItemKey) -> None:
        self.spec = spec
        self.key = key
        self.subject: Any = None
        #: The item's numbers; the makereport hook puts them on the report (JSON report,
        #: terminal table, record mode), and xunit1 JUnit gets them as properties.
        self.unitablate_record: dict[str, Any] = {}
        self.add_marker(pytest.mark.unitablate)
        if self.config.pluginmanager.hasplugin("xdist"):
            # registered by pytest-xdist; without it the mark would be an unknown marker
            # one group per (spec, layer): --dist loadgroup runs different layers' sweeps
            # in parallel; the disk cache makes each evaluation once whatever the mode
            self.add_marker(pytest.mark.xdist_group(name=f"{spec.path.name}:{key.check.layer}"))
        for mark in key.check.marks:
            self.add_marker(getattr(pytest.mark, mark.name)(*mark.args, **dict(mark.kwargs)))
        self._set_props({**static_record(spec, key), "spec_file": str(self.path)})

    def _set_props(self, values: dict[str, Any]) -> None:
        self.unitablate_record.update(values)
        if self.config.getini("junit_family") in ("xunit1", "legacy"):
            self.user_properties[:] = junit_properties(self.unitablate_record)

    def setup(self) -> None:
        """Resolve the spec's model and data in the setup phase.

        A failing fixture is then pytest's own ``ERROR at setup`` with the fixture's
        traceback, and ``--durations`` and ``--timeout`` charge the loading to setup, as
        they would for a test that requested the fixtures itself. The fixtures are
        resolved with ``request.getfixturevalue`` on the item's public ``request``.
        """
        __tracebackhide__ = True  # a failing fixture's traceback starts at the fixture
        super().setup()
        request = self.funcargs["request"]
        assert isinstance(request, pytest.FixtureRequest)
        try:
            self.subject = get_state(self.config).engine().bind(
                self.spec, fixture_lookup(request, self.spec))
            return
        except ItemProblem as exc:
            problem = problem_text(str(exc))
            self._set_props({"problem": exc.cause})
        pytest.fail(problem, pytrace=False)  # outside the except: no chained repeat

    def run_check(self) -> None:
        """Ask the engine to judge the item; pass its numbers, warnings and outcome on."""
        result = get_state(self.config).engine().run_item(self.spec, self.subject, self.key)
        self._set_props(result.record)
        for text in result.warnings:
            self.warn(UnitAblateWarning(text))
        if result.status == "failed":
            raise ThresholdMiss(result.message)
        if result.status == "error":
            raise ItemProblem(str(result.message),
                              cause=str(result.record.get("problem") or "spec"))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        if isinstance(excinfo.value, (ThresholdMiss, ItemProblem)):
            return str(excinfo.value)
        if not self.config.getoption("unitablate_full_trace", False):
            return (f"{self.spec.where(self.key.line)}: unexpected error while running "
                    f"{self.key.id}: {type(excinfo.value).__name__}: {excinfo.value}\n"
                    f"  (rerun with --unitablate-full-trace for the traceback)")
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int, str]:
        """Path, 0-based line and the failure headline.

        The headline is not a suffix of the node id on purpose: pytest's terminal rewrites a
        suffix domain's dots into ``::`` (it expects ``Class.method``), which would turn the
        layer ``layer3.0`` into ``layer3::0`` in ``-v`` output.
        """
        line = self.key.line
        return self.path, line - 1, f"{self.key.id} ({self.path.name}:{line})"


__all__ = ["ThresholdMiss", "UnitAblateItem", "fixture_lookup", "run_spec_item"]
