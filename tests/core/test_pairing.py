"""Every pass over the data is provably the same examples in the same order."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from pytest_unitablate import evaluate, scan
from pytest_unitablate.core.data import require_replayable
from pytest_unitablate.core.evaluation import check_paired
from pytest_unitablate.errors import DataError, UnpairedDataError

X = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
Y = torch.arange(4).repeat(10)
MODEL = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 4)).eval()


def _gen() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    yield X, Y


@pytest.mark.parametrize("data", [
    DataLoader(TensorDataset(X, Y), batch_size=8, shuffle=True),
    DataLoader(TensorDataset(X, Y), batch_size=8,
               sampler=WeightedRandomSampler([1.0] * 40, 40)),
    _gen(),
], ids=["shuffle", "weighted-sampler", "generator"])
def test_unreplayable_data_is_refused(data: object) -> None:
    with pytest.raises(DataError):
        require_replayable(data)
    with pytest.raises(DataError):
        scan(MODEL, data, "0")


@pytest.mark.parametrize("data", [
    [(X, Y)], (X, Y), TensorDataset(X, Y),
    DataLoader(TensorDataset(X, Y), batch_size=7), _gen,
], ids=["list", "pair", "dataset", "loader", "callable"])
def test_replayable_data_is_accepted_and_paired(data: object) -> None:
    require_replayable(data)
    a, b = evaluate(MODEL, data), evaluate(MODEL, data)
    assert a.fingerprint and a.fingerprint == b.fingerprint
    check_paired(a, b)


def test_a_reordered_or_changed_pass_is_not_paired() -> None:
    base = evaluate(MODEL, [(X, Y)])
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    with pytest.raises(UnpairedDataError) as raised:
        check_paired(base, evaluate(MODEL, [(X[perm], Y[perm])]))
    assert str(raised.value).startswith(
        "the ablated pass did not see the baseline's examples in the baseline's order (the "
        "labels come in another order): the data changes between passes")
    with pytest.raises(UnpairedDataError, match="the inputs differ"):
        check_paired(base, evaluate(MODEL, [(X + 1e-6, Y)]))
    with pytest.raises(UnpairedDataError, match="40 examples, then 39"):
        check_paired(base, evaluate(MODEL, [(X[:39], Y[:39])]))


class _Jittered:
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield X + 1e-3 * torch.randn(X.shape), Y


def test_scan_checks_every_naive_pass_against_its_baseline() -> None:
    with pytest.raises(UnpairedDataError, match=r"the pass with 0 units \[0\] ablated"):
        scan(MODEL, _Jittered(), "0", method="naive")
    result = scan(MODEL, [(X, Y)], "0", method="naive")
    assert result.baseline.fingerprint == evaluate(MODEL, [(X, Y)]).fingerprint


def test_a_pass_fingerprint_is_the_data_fingerprint() -> None:
    """Provenance's data_sha256 reuses the baseline's fingerprint: they must agree."""
    from pytest_unitablate.core.data import data_fingerprint

    assert evaluate(MODEL, (X, Y)).fingerprint == data_fingerprint((X, Y))
    loader = DataLoader(TensorDataset(X, Y), batch_size=13)
    assert evaluate(MODEL, loader).fingerprint == data_fingerprint(loader)
    assert evaluate(MODEL, (X, Y), batch_size=7).fingerprint == data_fingerprint(
        (X, Y), batch_size=7)
