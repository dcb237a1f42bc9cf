"""The model's structure hash: the code that defines it, wherever the checkout lies."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from torch import nn

from pytest_unitablate.engine.fingerprint import structure_sha256

SOURCE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x){tail}
"""


def _hash(folder: Path, tail: str = "") -> str:
    """structure_sha256 of ``ckpt_model.Net`` written to and imported from ``folder``."""
    folder.mkdir(parents=True)
    (folder / "ckpt_model.py").write_text(SOURCE.format(tail=tail))
    spec = importlib.util.spec_from_file_location("ckpt_model", folder / "ckpt_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ckpt_model"] = module
    try:
        spec.loader.exec_module(module)
        return structure_sha256(module.Net())
    finally:
        del sys.modules["ckpt_model"]


def test_the_same_code_in_another_checkout_folder_has_the_same_hash(tmp_path: Path) -> None:
    # a CI cache restored into another build directory must still answer
    a = _hash(tmp_path / "runner-0" / "repo")
    assert a == _hash(tmp_path / "runner-1" / "repo")
    assert _hash(tmp_path / "edited", " * 2") != a  # and the code itself still counts


def _notebook_hash(tail: str) -> str:
    """A class defined in a notebook cell: its file exists only in linecache."""
    import linecache
    import types

    filename = "/nonexistent/ipykernel/cell7.py"  # one cell, run again after an edit
    code = SOURCE.format(tail=tail)
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    module = types.ModuleType("nb_cell")
    module.__file__ = filename
    sys.modules["nb_cell"] = module
    try:
        exec(compile(code, filename, "exec"), module.__dict__)
        return structure_sha256(module.Net())
    finally:
        del sys.modules["nb_cell"]
        linecache.cache.pop(filename, None)


def test_a_class_from_a_notebook_cell_is_keyed_by_its_source() -> None:
    assert _notebook_hash("") != _notebook_hash(" * 2")


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 3)


def test_the_hash_is_the_repr_then_each_class_name_and_its_file() -> None:
    """The layout recorded hashes depend on: a change to it would make every recorded
    spec's hash differ from its model's after an upgrade."""
    import hashlib

    model = nn.Sequential(_Wrapper(), nn.ReLU())
    digest = hashlib.sha256(repr(model).encode())
    digest.update(f"\0{__name__}._Wrapper\0".encode())
    digest.update(Path(__file__).read_bytes())
    assert structure_sha256(model) == digest.hexdigest()


def test_a_model_of_torch_classes_alone_is_keyed_by_its_repr() -> None:
    import hashlib

    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    assert structure_sha256(model) == hashlib.sha256(repr(model).encode()).hexdigest()


class _Here:
    """A class defined in this file."""


def test_the_code_of_a_class_is_its_whole_file_or_nothing_when_unknown() -> None:
    import types

    from pytest_unitablate.engine.fingerprint import _code_of

    assert _code_of(_Here) == Path(__file__).read_bytes()
    # a class whose module is not loaded (no file is known: inspect raises TypeError)
    orphan = type("Orphan", (), {"__module__": "no_such_module_anywhere"})
    assert _code_of(orphan) == b""
    # a module whose file is gone (inspect finds no source: OSError)
    gone = types.ModuleType("gone_module")
    gone.__file__ = str(Path(__file__).parent / "no_such_file_here.py")
    sys.modules["gone_module"] = gone
    try:
        lost = type("Lost", (), {"__module__": "gone_module"})
        assert _code_of(lost) == b""
    finally:
        del sys.modules["gone_module"]


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")  # deprecated,
def test_bfloat16_and_quantized_weights_hash_by_their_bits() -> None:  # still loadable
    """numpy has neither dtype: a bfloat16 tensor is hashed as its raw 16 bits, a quantized
    one as its integer representation; either way a change of one value changes the
    hash, and the same values hash the same."""
    import torch
    from torch import nn

    from pytest_unitablate.engine.fingerprint import weights_sha256

    half = nn.Linear(3, 2).to(torch.bfloat16)
    first = weights_sha256(half)
    assert weights_sha256(half) == first
    with torch.no_grad():
        half.weight[0, 0] = half.weight[0, 0] + 1
    assert weights_sha256(half) != first

    quant = nn.Module()
    values = torch.tensor([0.1, -0.2, 0.3, 0.4])
    quant.register_buffer("q", torch.quantize_per_tensor(values, 0.1, 0, torch.qint8))
    before = weights_sha256(quant)
    quant.q = torch.quantize_per_tensor(values + torch.tensor([0.0, 0.0, 0.0, 0.2]), 0.1, 0,
                                        torch.qint8)
    assert weights_sha256(quant) != before
    quant.q = torch.quantize_per_tensor(values, 0.1, 0, torch.qint8)
    assert weights_sha256(quant) == before
