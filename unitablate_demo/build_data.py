"""Rebuild ``unitablate_demo/data/digits.npz`` from scikit-learn's copy of UCI digits.

Run ``python -m unitablate_demo.build_data`` (needs scikit-learn, only here). The result is
byte-for-byte reproducible: the split is a fixed, stratified 1000 / 200 / 597
(train / ranking / test) split drawn with ``numpy.random.default_rng(0)``, per class.

Data: UCI ML "Optical Recognition of Handwritten Digits" (E. Alpaydin, C. Kaynak, 1998),
https://doi.org/10.24432/C50P49, licensed CC BY 4.0. scikit-learn ships the 1,797-image
test part of it as ``sklearn.datasets.load_digits``.

Example::

    $ python -m unitablate_demo.build_data
    wrote unitablate_demo/data/digits.npz (1797 images; 1000/200/597); sha256 ...
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

DATA_PATH = Path(__file__).resolve().parent / "data" / "digits.npz"

SPLIT_SIZES: dict[str, int] = {"train": 1000, "ranking": 200, "test": 597}

CREDIT = (
    "UCI ML Optical Recognition of Handwritten Digits, E. Alpaydin and C. Kaynak (1998), "
    "https://doi.org/10.24432/C50P49, CC BY 4.0; via sklearn.datasets.load_digits"
)


def stratified_split(
    labels: npt.NDArray[np.uint8], sizes: dict[str, int], seed: int = 0
) -> dict[str, npt.NDArray[np.int64]]:
    """Split indices so every split has each class in proportion (largest remainder).

    Example::

        >>> y = np.repeat(np.arange(2, dtype=np.uint8), 10)
        >>> s = stratified_split(y, {"a": 10, "b": 10})
        >>> [int((y[s["a"]] == k).sum()) for k in (0, 1)]
        [5, 5]
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    if sum(sizes.values()) != n:
        raise ValueError(f"split sizes {sizes} do not add up to {n}")
    classes = np.unique(labels)
    per_class = {int(k): rng.permutation(np.flatnonzero(labels == k)) for k in classes}
    # quota[split][class] by the largest-remainder method, split by split
    remaining = {k: len(v) for k, v in per_class.items()}
    out: dict[str, list[int]] = {name: [] for name in sizes}
    names = list(sizes)
    for i, name in enumerate(names):
        if i == len(names) - 1:
            quota = dict(remaining)
        else:
            left = sum(remaining.values())
            want = sizes[name]
            exact = {k: remaining[k] * want / left for k in remaining}
            quota = {k: int(np.floor(v)) for k, v in exact.items()}
            short = want - sum(quota.values())
            order = sorted(remaining, key=lambda k: (-(exact[k] - quota[k]), k))
            for k in order[:short]:
                quota[k] += 1
        for k in sorted(per_class):
            taken = len(per_class[k]) - remaining[k]
            out[name].extend(int(j) for j in per_class[k][taken : taken + quota[k]])
            remaining[k] -= quota[k]
    return {name: np.sort(np.asarray(idx, dtype=np.int64)) for name, idx in out.items()}


def build(path: Path = DATA_PATH) -> str:
    """Write the npz file and return its sha256."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float64)
    if images.min() < 0 or images.max() > 16:
        raise ValueError("unexpected pixel range in load_digits")
    images_u8 = images.astype(np.uint8)
    labels = np.asarray(digits.target, dtype=np.uint8)
    split = stratified_split(labels, SPLIT_SIZES, seed=0)
    train = images_u8[split["train"]].astype(np.float64) / 16.0
    meta = {
        "name": "UCI handwritten digits (8x8, 0..16)",
        "credit": CREDIT,
        "license": "CC BY 4.0",
        "source": "sklearn.datasets.load_digits",
        "split": "stratified, numpy default_rng(0), sizes " + json.dumps(SPLIT_SIZES),
        "builder": "python -m unitablate_demo.build_data",
    }
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        images=images_u8,
        labels=labels,
        train=split["train"],
        ranking=split["ranking"],
        test=split["test"],
        # normalisation constants of pixel/16 over the train split
        mean=np.asarray(train.mean(), dtype=np.float32),
        std=np.asarray(train.std(), dtype=np.float32),
        meta=np.asarray(json.dumps(meta, sort_keys=True)),
    )
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA_PATH)
    args = parser.parse_args(argv)
    digest = build(args.out)
    sizes = "/".join(str(v) for v in SPLIT_SIZES.values())
    print(f"wrote {args.out} (1797 images; {sizes}); sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
