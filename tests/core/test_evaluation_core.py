"""evaluate(): equals a brute-force numpy computation; clear errors for bad data."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pytest_unitablate import evaluate
from pytest_unitablate.core.data import data_fingerprint
from pytest_unitablate.core.evaluation import checked_logits, logits_agree
from pytest_unitablate.errors import DataError, NonFiniteLogitsError


class Lookup(nn.Module):
    """Returns fixed logits per example: the input is the example's index."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx.long()]


@settings(deadline=None, max_examples=60)
@given(st.data())
def test_evaluate_equals_brute_force_numpy(data: Any) -> None:
    n = data.draw(st.integers(1, 40))
    c = data.draw(st.integers(2, 6))
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    logits = rng.integers(-3, 4, size=(n, c)).astype(np.float32)  # ties included
    labels = rng.integers(0, c, size=n)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=5))))
    bounds = [0, *[b for b in cuts if b < n], n]
    batches = [
        (torch.arange(a, b), torch.tensor(labels[a:b]))
        for a, b in itertools.pairwise(bounds) if b > a
    ]
    result = evaluate(Lookup(torch.tensor(logits)), batches)
    preds = logits.argmax(axis=1)  # numpy also takes the first maximum
    correct = preds == labels
    assert result.n == n
    assert np.array_equal(result.correct, correct)
    assert result.accuracy == pytest.approx(correct.mean())
    for k in range(c):
        mask = labels == k
        assert result.class_counts[k] == mask.sum()
        assert np.array_equal(result.class_correct(k), correct[mask])
        if mask.sum():
            assert result.class_accuracy[k] == pytest.approx(correct[mask].mean())
        else:
            assert np.isnan(result.class_accuracy[k])


def test_dataset_loader_and_tensor_pair_agree_and_repeat() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    x, y = torch.randn(37, 5), torch.randint(0, 3, (37,))
    a = evaluate(model, (x, y), batch_size=8)
    b = evaluate(model, TensorDataset(x, y), batch_size=5)
    c = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=16))
    d = evaluate(model, lambda: iter([(x[:20], y[:20]), (x[20:], y[20:])]))
    for r in (b, c, d, evaluate(model, (x, y))):
        assert np.array_equal(r.predictions, a.predictions)
        assert np.array_equal(r.labels, a.labels)


def test_modes_and_grad_restored_after_exception() -> None:
    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert not torch.is_grad_enabled()
            raise RuntimeError("boom")

    m = Fails().train()
    with pytest.raises(RuntimeError, match="boom"):
        evaluate(m, (torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)))
    assert m.training and m.drop.training
    assert torch.is_grad_enabled()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([(torch.zeros(2, 3),)], r"batch 0 is a tuple of length 1"),
        ([(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))], r"batch 0: \(2,\) inputs but 3"),
        ([(torch.zeros(2, 3), torch.zeros(2))], r"batch 0: labels have dtype torch.float32"),
        ([(torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.long))], r"shape \(2, 1\)"),
        ([(torch.zeros(2, 3), torch.tensor([0, 7]))], r"label 7 is out of range for 4 classes"),
        ([(torch.zeros(2, 3), torch.tensor([0, -1]))], r"negative label -1"),
        ([], r"no examples"),
        ([("x", torch.tensor([0]))], r"inputs are a str"),
        ([(torch.zeros(2, 3), [True, False])], r"batch 0: labels are booleans; expected "),
        ([(torch.zeros(2, 3), torch.tensor([True, False]))], r"labels have dtype torch.bool"),
        ([(torch.zeros(2, 3), [0, 1.0])], r"batch 0: labels are a list, not a tensor"),
        (42, r"got int"),
    ],
)
def test_bad_data_raises_a_located_data_error(data: Any, message: str) -> None:
    model = nn.Linear(3, 4)
    with pytest.raises(DataError, match=message):
        evaluate(model, data)


def test_nan_logits_and_wrong_logit_shapes() -> None:
    class Nan(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], 3)
            if x.shape[0] == 2:
                out[1, 0] = float("nan")
            return out

    with pytest.raises(NonFiniteLogitsError, match=r"batch 1: .*NaN or infinite logits for 1 of 2"):
        evaluate(Nan(), [(torch.zeros(1, 1), torch.tensor([0])), (torch.zeros(2, 1),
                                                               torch.tensor([0, 1]))])
    with pytest.raises(DataError, match=r"logits of shape \(2, 3, 1\)"):
        evaluate(nn.Unflatten(1, (3, 1)), (torch.zeros(2, 3), torch.tensor([0, 1])))


def test_fingerprint_is_stable_and_sensitive() -> None:
    x, y = torch.randn(10, 3), torch.randint(0, 3, (10,))
    assert data_fingerprint((x, y)) == data_fingerprint(TensorDataset(x, y))
    y2 = y.clone()
    y2[4] = (y2[4] + 1) % 3
    assert data_fingerprint((x, y)) != data_fingerprint((x, y2))


def test_logits_agree_only_as_tensors_of_one_shape_within_the_scale() -> None:
    """What every fast engine checks itself with on the first batch."""
    real = torch.tensor([[1.0, 2.0], [-300.0, 4.0]])
    assert logits_agree(real + 0.02, real)  # within 1e-4 of the largest logit, 300
    assert not logits_agree(real + 0.05, real)
    assert not logits_agree(real[:, :1], real[:1, :1].expand(1, 2))  # (2, 1) and (1, 2)
    assert not logits_agree(real.reshape(4), real)
    assert not logits_agree(real.tolist(), real)
    assert not logits_agree((real,), real)


@pytest.mark.parametrize(("produced", "width", "text"), [
    (3.5, None, "batch 2: the model returned float; expected a tensor of logits of shape "
                "(N, classes)"),
    (torch.zeros(4), None, "batch 2: the model returned logits of shape (4,); expected "
                           "(4, classes)"),
    (torch.zeros(3, 5), None, "batch 2: the model returned logits of shape (3, 5); expected "
                              "(4, classes)"),
    (torch.zeros(4, 5), 6, "batch 2: logits have 5 classes, expected 6"),
])
def test_logits_that_do_not_fit_the_batch_say_what_they_are(produced: Any, width: int | None,
                                                             text: str) -> None:
    with pytest.raises(DataError) as raised:
        checked_logits(2, produced, torch.zeros(4, dtype=torch.long), width)
    assert str(raised.value) == text


def test_an_output_object_with_attributes_gives_its_logits() -> None:
    """Not a mapping, not a tuple: an object whose attributes hold tensors (a dataclass,
    a namespace) gives its ``logits``, or its one tensor; private attributes do not
    count, and two public tensors without ``logits`` are refused."""
    from types import SimpleNamespace

    from pytest_unitablate.core.evaluation import select_logits
    from pytest_unitablate.errors import OutputError

    t, h = torch.zeros(2, 3), torch.zeros(2, 8)
    assert select_logits(SimpleNamespace(hidden=h, logits=t)) is t
    assert select_logits(SimpleNamespace(scores=t, _cache=h, note="x")) is t
    with pytest.raises(OutputError, match=r"^the model returned"):
        select_logits(SimpleNamespace(scores=t, hidden=h))


def test_the_fingerprint_reads_bfloat16_inputs_and_any_integer_labels() -> None:
    """bfloat16 inputs (numpy has no such type) are hashed, and differ from the same
    values in float32 (the dtype is part of the hash); labels are hashed as int64, so
    int32 and int64 labels of the same examples give one fingerprint."""
    x = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    half = data_fingerprint((x.bfloat16(), y))
    assert half == data_fingerprint((x.bfloat16(), y))
    assert half != data_fingerprint((x.bfloat16().float(), y))
    assert data_fingerprint((x, y.int())) == data_fingerprint((x, y))


def test_an_output_object_or_mapping_named_by_output_and_the_refusals() -> None:
    from types import SimpleNamespace

    from pytest_unitablate.core.evaluation import select_logits
    from pytest_unitablate.errors import OutputError

    t, h = torch.zeros(2, 3), torch.zeros(2, 8)
    assert select_logits(SimpleNamespace(scores=t, hidden=h), "scores") is t
    with pytest.raises(OutputError) as raised:
        select_logits(SimpleNamespace(scores=t), "logits")
    assert str(raised.value) == ("output: logits is not an attribute of the model's "
                                 "SimpleNamespace output")
    with pytest.raises(OutputError) as raised:
        select_logits({"z": t, "b": h, "note": "x"}, where="the model")
    assert str(raised.value) == (
        "the model returned a dict with keys ['b', 'note', 'z']; say which holds the "
        "logits with the spec key output: (e.g. output: b)")
    with pytest.raises(OutputError) as raised:
        select_logits({"note": "x"})
    assert str(raised.value).endswith("(e.g. output: logits)")


def test_labels_given_as_a_python_list_are_class_indices() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 4).eval()
    x = torch.randn(5, 3)
    listed = evaluate(model, [(x, [0, 3, 1, 2, 0])])
    tensor = evaluate(model, [(x, torch.tensor([0, 3, 1, 2, 0]))])
    assert np.array_equal(listed.labels, tensor.labels)
    assert np.array_equal(listed.correct, tensor.correct)


def test_a_data_callable_that_returns_no_batches_is_named() -> None:
    def make_loader() -> int:
        return 3

    model = nn.Linear(3, 4).eval()
    with pytest.raises(DataError) as raised:
        evaluate(model, make_loader)
    assert str(raised.value) == ("data callable 'make_loader' returned int, not an iterable "
                                 "of (inputs, labels) batches")


def test_empty_data_says_so_and_asks_about_a_used_up_iterator() -> None:
    from pytest_unitablate.core.data import iter_batches

    with pytest.raises(DataError) as raised:
        list(iter_batches([]))
    assert str(raised.value) == "the data has no examples"
    with pytest.raises(DataError) as raised:
        list(iter_batches(iter([])))
    assert str(raised.value) == ("the data has no examples (a one-shot iterator used up by "
                                 "an earlier pass?)")
