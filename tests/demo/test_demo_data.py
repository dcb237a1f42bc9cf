"""The shipped digits file: checksum, split sizes, disjointness, stratification, loader."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unitablate_demo import data
from unitablate_demo.build_data import stratified_split


def test_file_checksum_matches_pinned_value() -> None:
    assert data.data_sha256() == data.DATA_SHA256


def test_arrays_have_the_documented_shapes_and_ranges() -> None:
    with np.load(data.DATA_PATH) as f:
        images, labels = f["images"], f["labels"]
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert labels.shape == (1797,) and labels.dtype == np.uint8
    assert images.max() == 16 and images.min() == 0
    assert set(np.unique(labels).tolist()) == set(range(10))


def test_splits_are_disjoint_and_cover_everything() -> None:
    parts = [data.split_indices(s) for s in data.SPLITS]
    assert [len(p) for p in parts] == [1000, 200, 597]
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == 1797 == len(joined)


def test_splits_are_stratified() -> None:
    with np.load(data.DATA_PATH) as f:
        labels = f["labels"]
    overall = np.bincount(labels, minlength=10) / len(labels)
    for split in data.SPLITS:
        idx = data.split_indices(split)
        counts = np.bincount(labels[idx], minlength=10)
        # each class within one example of its exact proportional share
        assert np.all(np.abs(counts - overall * len(idx)) <= 1.0), (split, counts)


def test_metadata_credits_the_source() -> None:
    meta = data.metadata()
    assert "Alpaydin" in meta["credit"] and "Kaynak" in meta["credit"]
    assert meta["license"] == "CC BY 4.0"


@pytest.mark.parametrize(("split", "n"), [("train", 1000), ("ranking", 200), ("test", 597)])
def test_load_split_shapes_and_dtypes(split: data.SplitName, n: int) -> None:
    import torch

    x, y = data.load_split(split)
    assert x.shape == (n, 1, data.INPUT_SIZE, data.INPUT_SIZE) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    x8, y8 = data.load_split(split, size=None)
    assert x8.shape == (n, 1, 8, 8) and torch.equal(y, y8)


def test_loading_is_deterministic_and_normalised_on_train() -> None:
    import torch

    a, _ = data.load_split("test")
    b, _ = data.load_split("test")
    assert torch.equal(a, b)
    train8, _ = data.load_split("train", size=None)
    assert abs(float(train8.mean())) < 1e-4 and abs(float(train8.std()) - 1) < 1e-2


def test_loader_batches_cover_the_split_in_order() -> None:
    import torch

    _, y = data.load_split("test")
    batches = list(data.digits_loader("test", batch_size=256))
    assert [len(b[1]) for b in batches] == [256, 256, 85]
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    assert len(data.digits_dataset("ranking")) == 200


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown split"):
        data.split_indices("validation")  # type: ignore[arg-type]


@settings(deadline=None, max_examples=30)
@given(
    counts=st.lists(st.integers(min_value=3, max_value=30), min_size=2, max_size=5),
    frac=st.floats(min_value=0.2, max_value=0.8),
)
def test_stratified_split_is_a_stratified_partition(counts: list[int], frac: float) -> None:
    labels = np.repeat(np.arange(len(counts), dtype=np.uint8), counts)
    n = len(labels)
    a = int(n * frac)
    s = stratified_split(labels, {"a": a, "b": n - a}, seed=1)
    assert len(s["a"]) == a and len(s["b"]) == n - a
    assert len(np.intersect1d(s["a"], s["b"])) == 0
    for k, c in enumerate(counts):
        assert abs(int((labels[s["a"]] == k).sum()) - c * a / n) < 1.0 + 1e-9
