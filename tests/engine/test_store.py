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


def test_the_null_store_computes_everything_every_time() -> None:
    from pytest_unitablate.engine.store import NullStore

    store = NullStore()
    calls: list[object] = []
    for _ in range(2):
        assert store.try_get_or_compute(KEY, lambda: calls.append(1) or {"a": 1}) == {"a": 1}
        got = store.get_or_compute_many([KEY, KEY], lambda missing: calls.append(missing) or [
            {"i": i} for i in missing])
        assert got == [{"i": 0}, {"i": 1}]
    assert calls == [1, [0, 1], 1, [0, 1]]
    assert not store.enabled and store.summary() == "unitablate cache: off"


def test_entry_names_are_stable_and_ignore_key_order() -> None:
    """The name is the sha256 of the key's canonical JSON with the format number: caches
    restored in CI keep working across releases that do not change the format."""
    import hashlib
    import json

    canonical = json.dumps({"format": 1, **KEY}, sort_keys=True, separators=(",", ":"))
    assert entry_name(KEY) == hashlib.sha256(canonical.encode()).hexdigest()
    assert entry_name(dict(reversed(list(KEY.items())))) == entry_name(KEY)


def test_values_come_back_without_the_stored_key(tmp_path: Path) -> None:
    DiskStore(tmp_path).get_or_compute(KEY, _values)
    again = DiskStore(tmp_path).get_or_compute(KEY, _values)
    assert sorted(again) == ["method", "n", "predictions"]
    assert [p.suffix for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [".npz"]


def test_try_returns_none_at_once_while_another_holds_the_entry(tmp_path: Path) -> None:
    from filelock import FileLock

    store = DiskStore(tmp_path)
    lock = FileLock(str(tmp_path / f"{entry_name(KEY)}.npz") + ".lock")
    with lock:
        assert store.try_get_or_compute(KEY, _values) is None
    assert store.stats == {"hit": 0, "computed": 0, "recomputed": 0}
    first = store.try_get_or_compute(KEY, _values)
    assert first is not None and first["method"] == "prefix"
    again = store.try_get_or_compute(KEY, _values)
    assert again is not None and again["n"] == 3
    assert store.stats == {"hit": 1, "computed": 1, "recomputed": 0}


def test_a_lock_held_too_long_degrades_to_no_cache(tmp_path: Path) -> None:
    """Waiting for another process's entry ends after ``lock_timeout``: the value is
    computed here, with the one warning of a cache that cannot be used."""
    from filelock import FileLock

    store = DiskStore(tmp_path, lock_timeout=0.05)
    lock = FileLock(str(tmp_path / f"{entry_name(KEY)}.npz") + ".lock")
    with lock, pytest.warns(RuntimeWarning, match="evaluation cache"):
        values = store.get_or_compute(KEY, _values)
    assert values["method"] == "prefix" and store.broken is not None


def test_many_computes_only_the_missing_ones_in_one_call(tmp_path: Path) -> None:
    keys = [{**KEY, "unit": u} for u in range(4)]
    store = DiskStore(tmp_path)
    store.get_or_compute(keys[1], lambda: {"u": 1})
    path = tmp_path / f"{entry_name(keys[3])}.npz"
    path.write_bytes(b"truncated")
    calls: list[list[int]] = []

    def compute(missing: list[int]) -> list[dict[str, Any]]:
        calls.append(missing)
        return [{"u": i} for i in missing]

    got = store.get_or_compute_many(keys, compute)
    assert [v["u"] for v in got] == [0, 1, 2, 3] and calls == [[0, 2, 3]]
    assert store.stats == {"hit": 1, "computed": 4, "recomputed": 0}
    # each entry is kept on its own: found singly, and all together without computing
    assert DiskStore(tmp_path).get_or_compute(keys[3], lambda: {"u": -1}) == {"u": 3}
    fresh = DiskStore(tmp_path)
    assert [v["u"] for v in fresh.get_or_compute_many(keys, compute)] == [0, 1, 2, 3]
    assert calls == [[0, 2, 3]] and fresh.stats["hit"] == 4 and "4 reused" in fresh.summary()


def test_many_with_an_entry_made_while_waiting_for_the_group(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Another process may store one of the entries while this one waits for the group's
    lock: it is read, not computed again."""
    keys = [{**KEY, "unit": u} for u in range(3)]
    store = DiskStore(tmp_path)
    real = store._load
    seen: list[Any] = []

    def load(path: Path, key: Any) -> Any:
        seen.append(key)
        if key == keys[1] and seen.count(key) == 2:  # the second look, under the group lock
            DiskStore(tmp_path).get_or_compute(keys[1], lambda: {"u": 10})
        return real(path, key)

    monkeypatch.setattr(store, "_load", load)
    store.stats["hit"] = 3  # earlier hits are added to, not replaced
    got = store.get_or_compute_many(keys, lambda missing: [{"u": i} for i in missing])
    assert [v["u"] for v in got] == [0, 10, 2]
    assert store.stats == {"hit": 4, "computed": 2, "recomputed": 0}


def test_the_summary_says_what_was_reused_computed_and_recomputed(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    store.get_or_compute(KEY, _values)
    store.get_or_compute(KEY, _values)
    assert store.summary() == f"unitablate cache: 1 reused, 1 computed ({tmp_path})"
    (tmp_path / f"{entry_name(KEY)}.npz").write_bytes(b"junk")
    store.get_or_compute(KEY, _values)
    assert store.summary() == (f"unitablate cache: 1 reused, 1 computed, 1 unusable entries "
                               f"recomputed ({tmp_path})")


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    def refuse(src: str, dst: str) -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr(os, "replace", refuse)
    store = DiskStore(tmp_path)
    with pytest.warns(RuntimeWarning, match="read-only"):
        values = store.get_or_compute(KEY, _values)
    assert values["n"] == 3
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".tmp", ".npz")]


def test_the_computation_error_is_raised_by_many_and_try_too(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)

    def broken(*_: Any) -> Any:
        raise FileNotFoundError("the user's data file is missing")

    with pytest.raises(FileNotFoundError, match="data file"):
        store.get_or_compute_many([KEY], broken)
    with pytest.raises(FileNotFoundError, match="data file"):
        store.try_get_or_compute(KEY, broken)
    assert store.broken is None and store.summary().startswith("unitablate cache: 0 reused")


def test_a_stored_entry_is_read_while_another_process_holds_its_lock(tmp_path: Path) -> None:
    """Reading needs no lock: a finished entry is returned at once even while another
    process computes (holds the lock of) that entry."""
    from filelock import FileLock

    store = DiskStore(tmp_path)
    store.get_or_compute(KEY, _values)
    with FileLock(str(tmp_path / f"{entry_name(KEY)}.npz") + ".lock"):
        got = store.try_get_or_compute(KEY, _values)
        assert got is not None and got["n"] == 3
        assert store.get_or_compute(KEY, _values)["n"] == 3
    assert store.stats == {"hit": 2, "computed": 1, "recomputed": 0}


@pytest.mark.parametrize(("second", "stat"), [("written", "hit"), ("gone", "recomputed")])
def test_the_entry_is_looked_at_again_under_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second: str, stat: str) -> None:
    """Between the first look and taking the lock another worker may write the entry (it
    is read, not computed again) or remove a corrupt one (it is recomputed)."""
    store = DiskStore(tmp_path)
    DiskStore(tmp_path).get_or_compute(KEY, lambda: {"n": 7})
    store.stats["hit"] = 5  # earlier hits are added to, not replaced
    real = store._load
    looks: list[int] = []

    def load(path: Path, key: Any) -> Any:
        looks.append(1)
        if len(looks) == 1:  # the first look: not there yet, or unusable
            if second == "gone":
                path.unlink()
            return None, second == "gone"
        return real(path, key)

    monkeypatch.setattr(store, "_load", load)
    got = store.get_or_compute(KEY, lambda: {"n": 8})
    assert got["n"] == (7 if second == "written" else 8) and len(looks) == 2
    assert store.stats[stat] == (6 if stat == "hit" else 1)
    assert sum(store.stats.values()) == 6  # the 5 set above and this one


def test_hits_add_up(tmp_path: Path) -> None:
    store = DiskStore(tmp_path)
    keys = [{**KEY, "unit": u} for u in range(2)]
    for _ in range(3):
        store.get_or_compute(KEY, _values)
        store.get_or_compute_many(keys, lambda missing: [{"u": i} for i in missing])
    assert store.stats == {"hit": 2 + 4, "computed": 1 + 2, "recomputed": 0}


def test_a_folder_that_does_not_exist_yet_is_made_with_its_parents(tmp_path: Path) -> None:
    for first in ("one", "many"):
        root = tmp_path / first / "cache" / "unitablate"
        store = DiskStore(root)
        if first == "one":
            store.get_or_compute(KEY, _values)
        else:
            store.get_or_compute_many([KEY], lambda missing: [_values() for _ in missing])
        assert store.broken is None and (root / f"{entry_name(KEY)}.npz").is_file()


def test_no_folder_means_no_cache_for_many_too() -> None:
    seen: list[list[int]] = []
    store = DiskStore(None)
    got = store.get_or_compute_many([KEY, KEY], lambda missing: seen.append(missing) or [
        {"i": i} for i in missing])
    assert got == [{"i": 0}, {"i": 1}] and seen == [[0, 1]]


def test_the_failure_that_turned_the_cache_off_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for first in ("one", "many"):
        store = DiskStore(blocker / first)
        with pytest.warns(RuntimeWarning, match="NotADirectoryError"):
            if first == "one":
                store.get_or_compute(KEY, _values)
            else:
                store.get_or_compute_many([KEY], lambda missing: [_values() for _ in missing])
        assert store.broken is not None and store.broken.startswith("NotADirectoryError: ")


def test_a_group_lock_held_too_long_degrades_to_no_cache(tmp_path: Path) -> None:
    import hashlib

    from filelock import FileLock

    keys = [{**KEY, "unit": u} for u in range(2)]
    names = "".join(f"{entry_name(k)}.npz" for k in keys)
    group = tmp_path / f"group-{hashlib.sha256(names.encode()).hexdigest()}.lock"
    store = DiskStore(tmp_path, lock_timeout=0.05)
    with FileLock(str(group)), pytest.warns(RuntimeWarning, match="evaluation cache"):
        got = store.get_or_compute_many(keys, lambda missing: [{"u": i} for i in missing])
    assert [v["u"] for v in got] == [0, 1] and store.broken is not None


def test_an_entry_is_written_beside_itself_under_a_hidden_temporary_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written to a temporary file in the same folder (so the rename is atomic), named
    after the entry, then renamed over it: a reader never sees half an entry."""
    import os

    moves: list[tuple[str, str]] = []
    real = os.replace

    def replace(src: str, dst: str) -> None:
        moves.append((str(src), str(dst)))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    DiskStore(tmp_path).get_or_compute(KEY, _values)
    ((src, dst),) = moves
    name = f"{entry_name(KEY)}.npz"
    assert dst == str(tmp_path / name) and Path(src).parent == tmp_path
    assert Path(src).name.startswith(f".{name}.") and src.endswith(".tmp")


def test_a_pickled_entry_is_not_trusted(tmp_path: Path) -> None:
    """Loading a pickle runs code: an entry holding an object array (written by anything
    but this store) is recomputed, never unpickled."""
    from pytest_unitablate.engine.store import _META, _canonical

    path = tmp_path / f"{entry_name(KEY)}.npz"
    np.savez(path, **{_META: np.asarray(_canonical(KEY)),
                      "predictions": np.array([{"a": 1}], dtype=object)})
    store = DiskStore(tmp_path)
    assert store.get_or_compute(KEY, _values)["method"] == "prefix"
    assert store.stats == {"hit": 0, "computed": 0, "recomputed": 1}


def test_a_lock_held_for_a_moment_is_waited_for(tmp_path: Path) -> None:
    """Another process computing the entry: this one waits for it (no failure, no warning)
    and then reads what it wrote."""
    import threading
    import warnings

    from filelock import FileLock

    path = tmp_path / f"{entry_name(KEY)}.npz"
    lock = FileLock(str(path) + ".lock", thread_local=False)
    lock.acquire()
    store = DiskStore(tmp_path, lock_timeout=30)
    looked = threading.Event()
    real = store._load

    def load(where: Path, key: Any) -> Any:
        found = real(where, key)
        looked.set()  # the first look missed: now the other process finishes
        return found

    def finish() -> None:
        try:
            looked.wait(30)
            DiskStore(tmp_path)._store(path, KEY, {"n": 5})
        finally:
            lock.release()

    store._load = load  # type: ignore[method-assign]
    worker = threading.Thread(target=finish)
    worker.start()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = store.get_or_compute(KEY, _values)
    worker.join()
    assert got == {"n": 5} and store.broken is None
    assert store.stats == {"hit": 1, "computed": 0, "recomputed": 0}
