"""``pytest_unitablate.engine``'s names load on first use, each from its own module."""

from __future__ import annotations

import importlib

import pytest

import pytest_unitablate.engine as engine


@pytest.mark.parametrize("name", engine.__all__)
def test_each_name_is_its_modules_object(name: str) -> None:
    module = importlib.import_module(engine._LAZY[name])
    assert getattr(engine, name) is getattr(module, name)


def test_an_unknown_name_is_an_attribute_error_that_names_it() -> None:
    with pytest.raises(AttributeError, match=r"^module 'pytest_unitablate.engine' has no "
                                             r"attribute 'nope'$"):
        engine.nope  # noqa: B018
    assert sorted(engine._LAZY) == sorted(engine.__all__)
