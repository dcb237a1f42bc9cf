"""Where the engine keeps what it computed: a small interface, and the two stores it ships.

The engine memoises every evaluation in memory for as long as it lives; a :class:`Store`
is what it asks first, so results outlive the process and are shared between processes.
The engine knows nothing about where a store keeps its entries (the pytest plugin hands
it a :class:`DiskStore` under pytest's cache directory; :func:`run_spec` none, or the one
its caller gives).

* :class:`NullStore` keeps nothing: every entry is computed (the default of ``run_spec``).
* :class:`DiskStore` keeps numpy arrays, one ``.npz`` file per entry under a folder, named
  by the sha256 of its key. The key is everything that determines the arrays (the engine
  builds it: weights and buffers, the model's structure and source, a fingerprint of the
  data's inputs and labels, the ablation, the layer and units, device, dtype, seed, torch
  and package versions), and the file stores the key itself, so an entry is only used for
  the exact key that wrote it.

Concurrency (:class:`DiskStore`): a reader tries the entry without a lock; on a miss it
takes the entry's ``filelock.FileLock`` and looks again before computing, so two
processes (xdist workers, two CI jobs on one runner) that need the same entry compute it
once (the second waits, then reads). Writes go through a temporary file and
``os.replace``. A corrupt, truncated or foreign entry is recomputed and replaced, never
trusted.

Example::

    >>> import tempfile, pathlib, numpy as np
    >>> store = DiskStore(pathlib.Path(tempfile.mkdtemp()))
    >>> calls = []
    >>> def compute():
    ...     calls.append(1)
    ...     return {"predictions": np.arange(3)}
    >>> store.get_or_compute({"what": "baseline", "weights": "ab12"}, compute)["predictions"]
    array([0, 1, 2])
    >>> store.get_or_compute({"what": "baseline", "weights": "ab12"}, compute)["predictions"]
    array([0, 1, 2])
    >>> len(calls), store.stats
    (1, {'hit': 1, 'computed': 1, 'recomputed': 0})
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

FORMAT = 1
_META = "__unitablate_key__"


def entry_name(key: Mapping[str, Any]) -> str:
    """The file stem of ``key``: the sha256 of its canonical JSON."""
    return hashlib.sha256(_canonical(key).encode()).hexdigest()


def _canonical(key: Mapping[str, Any]) -> str:
    return json.dumps({"format": FORMAT, **key}, sort_keys=True, separators=(",", ":"))


Values = Mapping[str, Any]


class Store(Protocol):
    """What the engine needs of a store. ``enabled`` False means nothing is kept (the
    engine then skips hashing weights and data for keys)."""

    @property
    def enabled(self) -> bool: ...

    def get_or_compute(self, key: Mapping[str, Any],
                       compute: Callable[[], Values]) -> dict[str, Any]:
        """The values stored for ``key``, computing (and storing) them on a miss."""
        ...

    def try_get_or_compute(self, key: Mapping[str, Any],
                           compute: Callable[[], Values]) -> dict[str, Any] | None:
        """As :meth:`get_or_compute`, or ``None`` at once when another process is
        computing that entry (the caller can do other work first)."""
        ...

    def get_or_compute_many(self, keys: Sequence[Mapping[str, Any]],
                            compute: Callable[[list[int]], Sequence[Values]]
                            ) -> list[dict[str, Any]]:
        """The values of every key; ``compute(missing)`` is called once with the
        positions of the keys not stored and returns their values, in that order (one
        pass makes them all: a layer's named checks in one scan)."""
        ...

    def summary(self) -> str:
        """One line for a run's summary: what was reused and computed."""
        ...


class NullStore:
    """Keeps nothing: every entry is computed.

    >>> NullStore().get_or_compute({"what": "x"}, lambda: {"a": 1})
    {'a': 1}
    """

    enabled = False

    def get_or_compute(self, key: Mapping[str, Any],
                       compute: Callable[[], Values]) -> dict[str, Any]:
        return dict(compute())

    def try_get_or_compute(self, key: Mapping[str, Any],
                           compute: Callable[[], Values]) -> dict[str, Any] | None:
        return dict(compute())

    def get_or_compute_many(self, keys: Sequence[Mapping[str, Any]],
                            compute: Callable[[list[int]], Sequence[Values]]
                            ) -> list[dict[str, Any]]:
        return [dict(v) for v in compute(list(range(len(keys))))]

    def summary(self) -> str:
        return "unitablate cache: off"


class DiskStore:
    """Entries of numpy arrays under ``root`` (``None``: nothing kept, as
    :class:`NullStore`)."""

    def __init__(self, root: Path | None, *, lock_timeout: float = 3600.0) -> None:
        self.root = root
        self.lock_timeout = lock_timeout
        self.stats = {"hit": 0, "computed": 0, "recomputed": 0}
        #: why the store stopped keeping entries (a folder it cannot create or write)
        self.broken: str | None = None

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _give_up(self, exc: OSError) -> None:
        """Keep nothing from now on, and say so once (``RuntimeWarning``)."""
        if self.broken is None:
            self.broken = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"unitablate: the evaluation cache in {self.root} is off for the "
                          f"rest of this run, its folder cannot be used ({self.broken}); "
                          f"results are computed as without a cache", RuntimeWarning,
                          stacklevel=3)

    def get_or_compute(self, key: Mapping[str, Any],
                       compute: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
        """The arrays stored for ``key``, computing (and storing) them on a miss.

        ``compute`` returns numpy arrays or plain scalars and strings (stored as 0-d
        arrays and given back as Python values).
        """
        values = self._get_or_compute(key, compute, wait=True)
        assert values is not None
        return values

    def try_get_or_compute(self, key: Mapping[str, Any],
                           compute: Callable[[], Mapping[str, Any]]) -> dict[str, Any] | None:
        """As :meth:`get_or_compute`, but ``None`` at once when another process holds the
        entry's lock (it is computing it): the caller can do other work and come back."""
        return self._get_or_compute(key, compute, wait=False)

    def _get_or_compute(self, key: Mapping[str, Any], compute: Callable[[], Mapping[str, Any]],
                        wait: bool) -> dict[str, Any] | None:
        if self.root is None or self.broken is not None:
            return dict(compute())
        failed: list[BaseException] = []

        def guarded() -> Mapping[str, Any]:
            try:
                return compute()
            except BaseException as exc:  # the computation's own error, not the folder's
                failed.append(exc)
                raise

        try:
            return self._locked(key, guarded, wait)
        except OSError as exc:  # the folder cannot be created, locked or written
            if failed:
                raise
            self._give_up(exc)
            return dict(compute())

    def _locked(self, key: Mapping[str, Any], compute: Callable[[], Mapping[str, Any]],
                wait: bool) -> dict[str, Any] | None:
        assert self.root is not None
        from filelock import FileLock, Timeout

        path = self.root / f"{entry_name(key)}.npz"
        found, stale = self._load(path, key)
        if found is not None:
            self.stats["hit"] += 1
            return found
        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path) + ".lock", timeout=self.lock_timeout if wait else 0)
        try:
            lock.acquire()
        except Timeout:
            if wait:
                raise
            return None
        try:
            found, stale_now = self._load(path, key)  # another worker may have written it
            if found is not None:
                self.stats["hit"] += 1
                return found
            values = dict(compute())
            self._store(path, key, values)
        finally:
            lock.release()
        self.stats["recomputed" if (stale or stale_now) else "computed"] += 1
        return values

    def get_or_compute_many(self, keys: Sequence[Mapping[str, Any]],
                            compute: Callable[[list[int]], Sequence[Values]]
                            ) -> list[dict[str, Any]]:
        """As :meth:`Store.get_or_compute_many`. The missing entries are computed under
        one lock named after the whole group, so processes that plan the same group
        compute it once; each entry is stored (and found later) on its own."""
        if self.root is None or self.broken is not None:
            return [dict(v) for v in compute(list(range(len(keys))))]
        failed: list[BaseException] = []

        def guarded(missing: list[int]) -> Sequence[Values]:
            try:
                return compute(missing)
            except BaseException as exc:
                failed.append(exc)
                raise

        try:
            return self._locked_many(keys, guarded)
        except OSError as exc:
            if failed:
                raise
            self._give_up(exc)
            return [dict(v) for v in compute(list(range(len(keys))))]

    def _locked_many(self, keys: Sequence[Mapping[str, Any]],
                     compute: Callable[[list[int]], Sequence[Values]]) -> list[dict[str, Any]]:
        assert self.root is not None
        from filelock import FileLock

        paths = [self.root / f"{entry_name(k)}.npz" for k in keys]
        found: list[dict[str, Any] | None] = [self._load(p, k)[0] for p, k in zip(
            paths, keys, strict=True)]
        self.stats["hit"] += sum(v is not None for v in found)
        if all(v is not None for v in found):
            return [v for v in found if v is not None]
        self.root.mkdir(parents=True, exist_ok=True)
        group = hashlib.sha256("".join(p.name for p in paths).encode()).hexdigest()
        with FileLock(str(self.root / f"group-{group}.lock"), timeout=self.lock_timeout):
            missing = []
            for i, (path, key) in enumerate(zip(paths, keys, strict=True)):
                if found[i] is None:
                    found[i] = self._load(path, key)[0]  # another process may have made it
                    if found[i] is None:
                        missing.append(i)
                    else:
                        self.stats["hit"] += 1
            if missing:
                for i, values in zip(missing, compute(missing), strict=True):
                    found[i] = dict(values)
                    self._store(paths[i], keys[i], values)
                self.stats["computed"] += len(missing)
        return [v for v in found if v is not None]

    def _load(self, path: Path, key: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """(the entry's values, or None; whether a file was there but unusable)."""
        import numpy as np

        if not path.exists():
            return None, False
        try:
            with np.load(path, allow_pickle=False) as npz:
                if _META not in npz.files or str(npz[_META]) != _canonical(key):
                    return None, True  # foreign: another key hashed here, or another format
                return {name: _plain(npz[name]) for name in npz.files if name != _META}, False
        except Exception:  # truncated, corrupt, not a zip: recompute
            return None, True

    def _store(self, path: Path, key: Mapping[str, Any], values: Mapping[str, Any]) -> None:
        import numpy as np

        buffer = io.BytesIO()
        arrays: dict[str, Any] = {name: np.asarray(value) for name, value in values.items()}
        arrays[_META] = np.asarray(_canonical(key))
        np.savez(buffer, **arrays)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(buffer.getvalue())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def summary(self) -> str:
        s = self.stats
        if self.broken is not None:
            return f"unitablate cache: off after a failure ({self.broken}) ({self.root})"
        return (f"unitablate cache: {s['hit']} reused, {s['computed']} computed"
                + (f", {s['recomputed']} unusable entries recomputed" if s["recomputed"]
                   else "") + f" ({self.root})")


def _plain(array: Any) -> Any:
    """0-d arrays back to Python scalars and strings; other arrays as they are."""
    return array.item() if array.ndim == 0 else array


__all__ = ["DiskStore", "NullStore", "Store", "entry_name"]
