"""Run a function with the user's conftest fixtures, outside a test run (torch-free).

``discover --model my_model --data my_test_data`` names fixtures, as the spec will: the
same ``conftest.py`` that serves the spec serves discovery, with no second module of
import paths. :func:`with_fixtures` starts pytest in this process on a one-test file put
next to the ``conftest.py`` that defines the first name (or in the current directory),
and calls ``job(lookup)`` inside that test, where ``lookup(name)`` is
``request.getfixturevalue(name)``. The file and its folder are removed afterwards; the
user's ``addopts`` are left out (no xdist workers, no plugins' extra options).

The command line stays free of pytest: it runs this module in a subprocess
(``python -m pytest_unitablate.plugin.conftest_fixtures '<discover keyword arguments as
JSON>'``), which prints ``error: ...`` and exits 2 when discovery fails.

Example::

    text = with_fixtures(["my_model"], lambda lookup: discover(
        "my_model", "my_test_data", ["layer3"], Path("specs/x.yaml"), loader=lookup))
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: The job of the running :func:`with_fixtures` (the generated test reads it).
_JOB: dict[str, Any] = {}

_TEST = '''\
def test_unitablate_discover(request):
    from pytest_unitablate.plugin.conftest_fixtures import _run
    _run(request)
'''

_SKIP = {".git", ".venv", "venv", "node_modules", "site-packages", ".tox", ".nox",
         "__pycache__", "build", "dist"}


def conftest_for(name: str, root: Path) -> Path:
    """The folder of the ``conftest.py`` under ``root`` that defines fixture ``name``
    (``root`` when none says ``def name(``): tests there see it."""
    pattern = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(name)}\s*\(", re.MULTILINE)
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP and not d.startswith("."))
        if "conftest.py" in files:
            text = Path(folder, "conftest.py").read_text(encoding="utf-8", errors="replace")
            if pattern.search(text):
                return Path(folder)
    return root


def with_fixtures(names: Sequence[str], job: Callable[[Callable[[str], Any]], Any],
                  root: Path | None = None) -> Any:
    """``job(lookup)`` inside a pytest test that sees the conftest fixtures ``names``
    (the first decides which ``conftest.py``); returns what ``job`` returned. Raises
    ``LookupError`` naming the fixture pytest could not give, and re-raises what the job
    raised."""
    import pytest

    root = Path.cwd() if root is None else root
    where = conftest_for(names[0], root) if names else root
    folder = Path(tempfile.mkdtemp(prefix="unitablate_discover_", dir=where))
    _JOB.clear()
    _JOB.update(job=job)
    try:
        test = folder / "test_unitablate_discover.py"
        test.write_text(_TEST, encoding="utf-8")
        failures = _Failures()
        code = pytest.main([str(test), "-o", "addopts=", "-p", "no:cacheprovider",
                            "-p", "no:randomly", "-p", "no:terminal", "-s",
                            "-p", "no:warnings", "--rootdir", str(root)], plugins=[failures])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if "error" in _JOB:
        raise _JOB["error"]
    if "result" not in _JOB:
        why = f": {failures.text}" if failures.text else f" (pytest exit {int(code)})"
        raise LookupError(
            f"pytest could not give the fixtures {', '.join(names)}{why}. Define them in a "
            f"conftest.py under {root}, or pass import paths 'package.module:callable'")
    return _JOB["result"]


class _Failures:
    """What pytest said about the generated test when it failed (the terminal is off, so
    no progress dots reach the command's output)."""

    def __init__(self) -> None:
        self.text = ""

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed and not self.text:
            lines = [line.strip().removeprefix("E").strip()
                     for line in str(report.longreprtext).splitlines()
                     if line.strip().startswith(("E ", "fixture '"))]
            self.text = "; ".join(dict.fromkeys(lines[:2]))[:500]


def _run(request: Any) -> None:
    """The generated test's body: the job, with fixtures looked up by name."""
    try:
        _JOB["result"] = _JOB["job"](request.getfixturevalue)
    except Exception as exc:
        if type(exc).__name__ == "FixtureLookupError":
            raise
        _JOB["error"] = exc


def discover_main(argv: Sequence[str]) -> int:
    """Run :func:`~pytest_unitablate.analysis.discover.discover` with the keyword
    arguments ``argv[0]`` holds (JSON; ``out`` a path), its model and data references
    resolved as conftest fixtures where they are names. Prints ``error: ...`` and returns
    2 when it fails."""
    import json
    import sys

    from pytest_unitablate.analysis.discover import discover, is_fixture_name, load_reference
    from pytest_unitablate.errors import UnitAblateError

    kwargs = json.loads(argv[0])
    kwargs["out"] = Path(kwargs["out"])
    data = kwargs["data_ref"]
    refs = [kwargs["model_ref"], *(data.values() if isinstance(data, dict) else [data])]
    names = [r for r in refs if is_fixture_name(r)]

    def job(lookup: Callable[[str], Any]) -> str:
        return discover(**kwargs, loader=lambda ref: lookup(ref) if is_fixture_name(ref)
                        else load_reference(ref))

    try:
        with_fixtures(names, job)
    except (UnitAblateError, FileExistsError, ValueError, ImportError, AttributeError,
            TypeError, LookupError) as exc:
        from pytest_unitablate.cli import _for_discover  # the options' words, not spec keys

        print(f"error: {_for_discover(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # a fixture of the user's raised (a weights file missing, ...)
        print(f"error: discovery stopped: {type(exc).__name__}: {exc} (from a fixture, or "
              f"the model's forward on the data)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # the module's own copy holds the job the generated test reads
    import sys

    from pytest_unitablate.plugin.conftest_fixtures import discover_main as _main

    raise SystemExit(_main(sys.argv[1:]))


__all__ = ["conftest_for", "discover_main", "with_fixtures"]
