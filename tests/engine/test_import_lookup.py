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


def test_a_fixture_not_given_names_the_ones_that_were() -> None:
    from pytest_unitablate.engine.refs import mapping_lookup

    with pytest.raises(UnknownName) as err:
        mapping_lookup({"net": 1, "digits": 2})("model")
    assert err.value.name == "model"
    assert err.value.hint == ("it is not one of the fixtures given (digits, net) and not an "
                              "import path 'package.module:callable'")
    with pytest.raises(UnknownName) as none:
        mapping_lookup({}, "objects")("model")
    assert "not one of the objects given (none)" in none.value.hint


def test_a_position_view_keeps_the_data_the_ranking_and_the_output() -> None:
    import torch
    from torch import nn

    from pytest_unitablate.engine.refs import Subject

    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, -x  # (batch, tokens, classes) twice

    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    subject = Subject(model=Pair(), data="d", ranking="r", references={"a": 1})
    view = subject.at(-1, 1)
    assert (view.data, view.ranking, view.references) == ("d", "r", {"a": 1})
    assert torch.equal(view.model(x), -x[:, -1])  # output 1, last position
    assert subject.at(-1, 1) is view and subject.at(None, 1) is subject
    assert subject.group_ids() is None  # plain data: not grouped
