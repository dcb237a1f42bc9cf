"""``check --fixture NAME=module:function``: the lookup behind it, and what it says when
a name or a path is wrong."""

from __future__ import annotations

import pytest

from pytest_unitablate.engine.refs import UnknownName, import_lookup
from pytest_unitablate.errors import ItemProblem


def test_a_name_not_given_is_unknown_with_where_names_come_from() -> None:
    lookup = import_lookup({"d": "collections:OrderedDict"}, "the names given with --fixture")
    with pytest.raises(UnknownName) as err:
        lookup("model")
    assert (err.value.name, err.value.hint) == ("model", "the names given with --fixture")
    assert err.value.args == ("model",)
    assert lookup("d") is lookup("d")  # called once, then kept


@pytest.mark.parametrize(("path", "says"), [
    ("no_such_module_xyz:f", "--fixture: fixture m=no_such_module_xyz:f "
                             "'no_such_module_xyz:f': cannot import 'no_such_module_xyz': "
                             "ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ("collections:nope", "--fixture: fixture m=collections:nope 'collections:nope': "
                         "module 'collections' has no attribute 'nope'"),
    ("math:pi", "--fixture: fixture m=math:pi 'math:pi' is not callable"),
])
def test_a_wrong_path_is_a_located_problem(path: str, says: str) -> None:
    with pytest.raises(ItemProblem) as err:
        import_lookup({"m": path}, "")("m")
    assert str(err.value) == says
