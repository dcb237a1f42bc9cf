"""The on-disk evaluation cache: reuse, never trusting a bad entry, one computation across
processes (the xdist case), and off meaning off."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_unitablate.engine.store import DiskStore, entry_name

KEY = {"what": "sweep", "layer": "layer3", "weights": "w1", "data": "d1"}


def _values() -> dict[str, Any]:
    return {"predictions": np.arange(12).reshape(3, 4), "method": "prefix", "n": 3}


def test_an_entry_is_reused_with_its_types(tmp_path: Path) -> None:
    cache = DiskStore(tmp_path)
    first = cache.get_or_compute(KEY, _values)
    again = cache.get_or_compute(KEY, lambda: (_ for _ in ()).throw(AssertionError("ran")))
    assert np.array_equal(again["predictions"], first["predictions"])
    assert again["method"] == "prefix" and again["n"] == 3 and isinstance(again["n"], int)
    assert cache.stats == {"hit": 1, "computed": 1, "recomputed": 0}


def test_every_key_field_separates_entries(tmp_path: Path) -> None:
    cache = DiskStore(tmp_path)
    cache.get_or_compute(KEY, _values)
    for field in KEY:
        other = {**KEY, field: KEY[field] + "x"}
        assert entry_name(other) != entry_name(KEY)
        cache.get_or_compute(other, _values)
    assert cache.stats["computed"] == 1 + len(KEY)


def test_a_corrupt_or_truncated_entry_is_recomputed(tmp_path: Path) -> None:
    cache = DiskStore(tmp_path)
    cache.get_or_compute(KEY, _values)
    path = tmp_path / f"{entry_name(KEY)}.npz"
    for damage in (b"not a zip file", path.read_bytes()[:40]):
        path.write_bytes(damage)
        values = cache.get_or_compute(KEY, _values)
        assert np.array_equal(values["predictions"], _values()["predictions"])
    assert cache.stats["recomputed"] == 2
    assert DiskStore(tmp_path).get_or_compute(KEY, _values)["method"] == "prefix"


def test_a_foreign_entry_under_the_name_is_not_trusted(tmp_path: Path) -> None:
    """A file at the key's name written for another key (or an older format)."""
    cache = DiskStore(tmp_path)
    other = {**KEY, "layer": "layer4"}
    cache.get_or_compute(other, lambda: {"predictions": np.zeros((3, 4)), "method": "naive"})
    (tmp_path / f"{entry_name(other)}.npz").rename(tmp_path / f"{entry_name(KEY)}.npz")
    values = cache.get_or_compute(KEY, _values)
    assert values["method"] == "prefix" and cache.stats["recomputed"] == 1


def test_off_computes_every_time_and_writes_nothing(tmp_path: Path) -> None:
    cache = DiskStore(None)
    calls = []
    for _ in range(2):
        cache.get_or_compute(KEY, lambda: calls.append(1) or _values())
    assert len(calls) == 2 and not cache.enabled and not list(tmp_path.iterdir())


def _worker(root: str, log: str, out: Any) -> None:
    def compute() -> dict[str, Any]:
        with open(log, "a") as fh:
            fh.write("computed\n")
        time.sleep(0.5)  # long enough for the other process to arrive and wait
        return _values()

    values = DiskStore(Path(root)).get_or_compute(KEY, compute)
    out.put(values["predictions"].tolist())


def test_two_processes_needing_one_entry_compute_it_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    log = tmp_path / "log.txt"
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "c"), str(log), out))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert log.read_text().count("computed") == 1
    assert results[0] == results[1] == _values()["predictions"].tolist()


def test_an_xdist_worker_takes_its_share_of_the_cpus(monkeypatch: Any) -> None:
    import os

    import torch

    from pytest_unitablate.plugin.state import share_threads, xdist_worker

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
        monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
        cpus = len(os.sched_getaffinity(0))
        assert share_threads() == max(1, cpus // 2) == torch.get_num_threads()
        assert xdist_worker() == (1, 2)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert share_threads() is None  # the user's setting wins
    finally:
        torch.set_num_threads(before)


def test_a_folder_that_cannot_be_used_degrades_to_no_cache_once(tmp_path: Path) -> None:
    import warnings

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = DiskStore(blocker / "unitablate")  # mkdir fails: NotADirectoryError
    calls: list[int] = []

    def compute() -> dict[str, Any]:
        calls.append(1)
        return _values()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = store.get_or_compute(KEY, compute)
        again = store.get_or_compute(KEY, compute)
        many = store.get_or_compute_many([KEY, {**KEY, "layer": "x"}],
                                         lambda missing: [_values() for _ in missing])
    assert np.array_equal(first["predictions"], again["predictions"]) and len(many) == 2
    assert len(calls) == 2  # computed each time: nothing kept
    assert len(caught) == 1 and "evaluation cache" in str(caught[0].message)
    assert store.broken is not None and "off after a failure" in store.summary()


def test_an_error_of_the_computation_is_not_taken_for_the_folders(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)

    def compute() -> dict[str, Any]:
        raise FileNotFoundError("the user's data file is missing")

    with pytest.raises(FileNotFoundError, match="data file"):
        store.get_or_compute(KEY, compute)
    assert store.broken is None
