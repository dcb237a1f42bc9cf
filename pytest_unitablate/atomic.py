r"""Atomic file writes, shared by every layer that writes a user's file (torch-free).

A spec, a JSON report or an HTML page is written to a temporary file in the same folder,
flushed to disk and moved over the target with ``os.replace``: a reader (or an xdist
worker) never sees half a file, and an interrupted run leaves the old file intact.

Files that must agree with each other (a spec and the signatures sidecar whose sha256 it
records) go through :func:`atomic_write_all`: every new text is on disk before the first
move. Both functions run with SIGINT and SIGTERM held back (the few milliseconds a small
file takes), so Ctrl-C or a CI runner's cancellation leaves all files old or all new, and
no temporary file behind. (A SIGKILL or a power cut between two moves, a window of
microseconds, cannot be held back.)

Example::

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> atomic_write(p, "hello\n")
    >>> p.read_text()
    'hello\n'
    >>> q = p.with_name("other.txt")
    >>> atomic_write_all([(p, "one\n"), (q, "two\n")])
    >>> p.read_text(), q.read_text()
    ('one\n', 'two\n')
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, keeping its permission bits."""
    atomic_write_all([(path, text)])


def atomic_write_all(files: Sequence[tuple[Path, str]]) -> None:
    """Replace every ``(path, text)`` in ``files`` together: all old or all new.

    An interrupt (SIGINT, SIGTERM) that arrives meanwhile is delivered after the last
    move; an error moving one (or an interrupt where signals cannot be held, on Windows)
    puts the old text back into those already moved.
    """
    temps: list[tuple[str, Path]] = []
    # held from the first temporary file on: an interrupt can leave no stray file either
    with _interrupts_held():
        try:
            for path, text in files:
                temps.append((_written_beside(path, text), path))
            olds = {path: path.read_bytes() if path.is_file() else None for _, path in temps}
            moved: list[Path] = []
            try:
                for tmp, path in temps:
                    os.replace(tmp, path)
                    moved.append(path)
            except BaseException:
                for path in moved:
                    _put_back(path, olds[path])
                raise
        finally:
            for tmp, _ in temps:
                Path(tmp).unlink(missing_ok=True)


def _written_beside(path: Path, text: str) -> str:
    """``text`` in a flushed temporary file beside ``path``, with the bits ``path`` has
    (or what ``open()`` would give a new file); return the temporary file's path."""
    # an existing file keeps its bits; a new one gets what open() would give it (0o666
    # minus the umask), not mkstemp's private 0o600
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _put_back(path: Path, old: bytes | None) -> None:
    """Undo a move: ``path`` gets its old bytes again, or goes if it did not exist."""
    if old is None:
        path.unlink(missing_ok=True)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(old)
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block (where the platform can)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: the caller's rollback only
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    current = os.umask(0o022)
    os.umask(current)
    return current
