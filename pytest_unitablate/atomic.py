r"""Atomic file writes, shared by every layer that writes a user's file (torch-free).

A spec, a JSON report or an HTML page is written to a temporary file in the same folder,
flushed to disk and moved over the target with ``os.replace``: a reader (or an xdist
worker) never sees half a file, and an interrupted run leaves the old file intact.

Example::

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> atomic_write(p, "hello\n")
    >>> p.read_text()
    'hello\n'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, keeping its permission bits."""
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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    current = os.umask(0o022)
    os.umask(current)
    return current

