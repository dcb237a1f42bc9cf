"""A spec's ``model:``, ``data:`` and ``ranking_data:`` references, resolved to objects.

A reference is either a name the front end knows (a pytest fixture; a key of
``run_spec(fixtures=...)``) or ``package.module:callable``, imported and called once per
engine. The front end hands the engine a *lookup*: a function from a name to its object
that raises :class:`UnknownName` for a name it does not know; the message the engine
then gives says where the name is used and what the front end suggests.

Example::

    >>> refs = References()
    >>> refs.resolve("collections:OrderedDict", "model", 3, where="s.yaml", lookup=None)
    OrderedDict()
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_unitablate.errors import ItemProblem


class UnknownName(LookupError):
    """The lookup does not know this name; ``hint`` says where names come from."""

    def __init__(self, name: str, hint: str) -> None:
        super().__init__(name)
        self.name = name
        self.hint = hint


#: ``lookup(name) -> object``, raising :class:`UnknownName` for a name it does not know.
Lookup = Callable[[str], Any]


def mapping_lookup(objects: Mapping[str, Any], what: str = "fixtures") -> Lookup:
    """A lookup over a plain mapping (``run_spec(fixtures=...)``).

    >>> mapping_lookup({"m": 1})("m")
    1
    """

    def lookup(name: str) -> Any:
        if name in objects:
            return objects[name]
        known = ", ".join(sorted(objects)) or "none"
        raise UnknownName(name, f"it is not one of the {what} given ({known}) and not an "
                                f"import path 'package.module:callable'")

    return lookup


class References:
    """Resolves references; import-path references are called once and kept."""

    def __init__(self) -> None:
        self._imported: dict[str, Any] = {}

    def resolve(self, ref: str, what: str, line: int, *, where: str,
                lookup: Lookup | None) -> Any:
        """The object ``ref`` names; a located :class:`ItemProblem` when it cannot be had.

        ``where`` is the spec's path (messages start ``where:line:``). An exception that
        the lookup raises for a known name (a fixture that fails) goes through untouched.
        """
        __tracebackhide__ = True  # (pytest's convention; nothing is imported for it)
        here = f"{where}:{line}"
        if ":" not in ref:
            if lookup is None:
                raise ItemProblem(f"{here}: {what} {ref!r} is not an import path "
                                  f"'package.module:callable' and no names were given")
            try:
                return lookup(ref)
            except UnknownName as exc:
                raise ItemProblem(f"{here}: {what} {ref!r}: {exc.hint}") from None
        if ref not in self._imported:
            self._imported[ref] = call_import_path(ref, what, here)
        return self._imported[ref]


def call_import_path(ref: str, what: str, here: str) -> Any:
    """Import ``package.module:callable`` and call it; a located problem otherwise."""
    module_name, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ItemProblem(f"{here}: {what} {ref!r}: cannot import {module_name!r}: "
                          f"{type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ItemProblem(f"{here}: {what} {ref!r}: module {module_name!r} has no "
                              f"attribute {attr!r}") from None
        obj = getattr(obj, part)
    if not callable(obj):
        raise ItemProblem(f"{here}: {what} {ref!r} is not callable")
    if _is_pytest_fixture(obj):
        raise ItemProblem(
            f"{here}: {what} {ref!r} is a pytest fixture, which only pytest can call: "
            f"give a plain function that returns the {what} (a fixture can call it too), "
            f"or run the spec with pytest")
    try:
        return obj()
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # also pytest's outcomes (BaseException), e.g. skip()
        raise ItemProblem(f"{here}: {what} {ref!r} raised {type(exc).__name__}: {exc}",
                          cause="model") from None


def _is_pytest_fixture(obj: Any) -> bool:
    """A function decorated with ``@pytest.fixture`` (without importing pytest): pytest
    8.4+ wraps it in a ``FixtureFunctionDefinition``, older ones mark the function."""
    return (type(obj).__name__ == "FixtureFunctionDefinition"
            or hasattr(obj, "_pytestfixturefunction")
            or hasattr(obj, "_fixture_function_marker"))


@dataclass(frozen=True)
class Subject:
    """What a spec is evaluated on: the model, the evaluation data and (for ``top_units``
    with ``ranking_data:``) the ranking data, resolved and checked."""

    model: Any  # torch.nn.Module
    data: Any
    ranking: Any = None
    #: ``reference:`` values (spec-level and per check): reference string -> data
    references: dict[str, Any] = field(default_factory=dict)
    #: the model as a next-token classifier, per (position, output): see :meth:`at`
    views: dict[Any, Subject] = field(default_factory=dict, compare=False, repr=False)

    def data_for(self, ranking: bool) -> Any:
        """The ranking data when asked for and declared, else the evaluation data."""
        return self.ranking if ranking and self.ranking is not None else self.data

    def at(self, position: int | str | None, output: int | str | None) -> Subject:
        """This subject with the model judged on its next-token logits at ``position``
        (``core.next_token``; one view per position, kept, so its evaluations are
        cached as any model's); itself for ``None``."""
        if position is None:
            return self
        key = (position, output)
        if key not in self.views:
            from pytest_unitablate.core.next_token import next_token

            self.views[key] = Subject(model=next_token(self.model, position, output),
                                      data=self.data, ranking=self.ranking,
                                      references=self.references)
        return self.views[key]

    def group_ids(self, ranking: bool = False) -> Any:
        """Per example (in pass order), the index of its data group; ``None`` when the
        data is not grouped."""
        data = self.data_for(ranking)
        return data.group_ids() if hasattr(data, "group_ids") else None


def import_lookup(refs: Mapping[str, str], hint: str) -> Lookup:
    """A lookup whose names stand for import paths (``check --fixture NAME=pkg.mod:fn``),
    each imported and called on first use and kept.

    >>> import_lookup({"d": "collections:OrderedDict"}, "")("d")
    OrderedDict()
    """
    made: dict[str, Any] = {}

    def lookup(name: str) -> Any:
        if name not in refs:
            raise UnknownName(name, hint)
        if name not in made:
            made[name] = call_import_path(refs[name], f"fixture {name}={refs[name]}",
                                          "--fixture")
        return made[name]

    return lookup


__all__ = ["Lookup", "References", "Subject", "UnknownName", "call_import_path",
           "import_lookup", "mapping_lookup"]
