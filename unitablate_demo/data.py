"""Load the shipped UCI digits splits as torch tensors (numpy + torch only).

The file ``data/digits.npz`` holds the 1,797 8x8 images (uint8, 0..16), their labels and
three fixed, stratified, disjoint index arrays: ``train`` (1000), ``ranking`` (200) and
``test`` (597). Images are scaled to ``pixel / 16``, normalised with the train split's mean
and std, and by default upsampled to :data:`INPUT_SIZE` x :data:`INPUT_SIZE` with torch's
bilinear interpolation (deterministic), which both demo models take.

Data credit: UCI ML Optical Recognition of Handwritten Digits, E. Alpaydin and C. Kaynak,
CC BY 4.0 (see ``data/README.md``).

Example::

    >>> X, y = load_split("test")
    >>> tuple(X.shape), tuple(y.shape), str(X.dtype), str(y.dtype)
    ((597, 1, 16, 16), (597,), 'torch.float32', 'torch.int64')
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

DATA_PATH = Path(__file__).resolve().parent / "data" / "digits.npz"

#: sha256 of the shipped ``data/digits.npz`` (rebuild: ``python -m unitablate_demo.build_data``).
DATA_SHA256 = "8cfecb3ceeefc0c1a70584785d905bb2a40123ec32a42d57d8ce9bd9cedc9dff"

#: Side length of the images both demo models take (the 8x8 originals, upsampled).
INPUT_SIZE = 16

SplitName = Literal["train", "ranking", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "ranking", "test")


@lru_cache(maxsize=1)
def _arrays() -> dict[str, np.ndarray]:
    with np.load(DATA_PATH, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def data_sha256() -> str:
    """sha256 of the data file on disk."""
    return hashlib.sha256(DATA_PATH.read_bytes()).hexdigest()


def metadata() -> dict[str, str]:
    """The file's metadata (name, credit, license, source, split, builder)."""
    meta: dict[str, str] = json.loads(str(_arrays()["meta"]))
    return meta


def split_indices(name: SplitName) -> np.ndarray:
    """Indices (into the 1,797 images) of a split, sorted ascending."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
    return _arrays()[name]


def load_split(name: SplitName, size: int | None = INPUT_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, size, size)`` float32, normalised, and labels ``(N,)`` int64.

    ``size=None`` (or 8) keeps the 8x8 originals; otherwise they are upsampled bilinearly.
    """
    import torch
    import torch.nn.functional as F

    a = _arrays()
    idx = split_indices(name)
    x = torch.from_numpy(a["images"][idx].astype(np.float32) / 16.0)
    x = (x - float(a["mean"])) / float(a["std"])
    x = x.unsqueeze(1).contiguous()
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.from_numpy(a["labels"][idx].astype(np.int64))
    return x, y


def digits_dataset(split: SplitName, size: int | None = INPUT_SIZE) -> TensorDataset:
    """A ``TensorDataset`` of ``(image, label)`` pairs of a split."""
    from torch.utils.data import TensorDataset

    return TensorDataset(*load_split(split, size))


def digits_loader(
    split: SplitName, batch_size: int = 256, size: int | None = INPUT_SIZE
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """An unshuffled ``DataLoader`` of ``(inputs, labels)`` batches of a split."""
    from torch.utils.data import DataLoader

    return DataLoader(digits_dataset(split, size), batch_size=batch_size, shuffle=False)
