"""The spec-file collector: a YAML spec becomes one test item per constraint (torch-free).

A :class:`SpecFile` is a ``pytest.File``. Parsing and validation happen at collection, so
every spec problem is a collection error (``path:line: message``, all at once, exit 2).

Example (what pytest does)::

    spec_file = SpecFile.from_parent(session, path=Path("specs/resnet.yaml"))
    items = list(spec_file.collect())   # one UnitAblateItem per constraint
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_unitablate.errors import SpecError, torch_missing
from pytest_unitablate.plugin.item import UnitAblateItem, run_spec_item
from pytest_unitablate.plugin.state import STATE_KEY
from pytest_unitablate.spec.ids import item_ids
from pytest_unitablate.spec.loader import load_spec


class SpecFile(pytest.File):
    """A spec file: parsed and validated at collection; problems are collection errors."""

    def collect(self) -> Iterator[pytest.Item]:
        shown = display_path(self.path, self.config.invocation_params.dir)
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise self.CollectError(f"{shown}:0: cannot read the spec: {exc}") from None
        try:
            spec = load_spec(shown, text=text)
        except SpecError as exc:
            raise self.CollectError(
                f"{len(exc.problems)} problem(s) in spec {shown}:\n{exc}"
            ) from None
        keys = item_ids(spec)
        if not keys:
            raise self.CollectError(f"{shown}:1: the spec yields no test items")
        missing = torch_missing(f"the spec {shown}")
        if missing is not None:  # one line, no traceback; the run then exits 4 (hooks.py)
            state = self.config.stash.get(STATE_KEY, None)
            if state is not None:
                state.torch_missing = True
            raise self.CollectError(missing)
        # torch is imported here, at collection, where an ordinary test module imports it:
        # never inside a test's setup or call, where pytest-timeout's signal could land in
        # the middle of the import and leave a half-initialised torch behind (a crash).
        import torch  # noqa: F401
        for key in keys:
            item = UnitAblateItem.from_parent(
                self, name=key.id, callobj=run_spec_item, originalname=key.id
            )
            item.setup_spec(spec, key)
            yield item


def display_path(path: Path, start: Path) -> str:
    """``path`` relative to where pytest was invoked, when it lies below it.

    >>> display_path(Path("/a/b/s.yaml"), Path("/a"))
    'b/s.yaml'
    >>> display_path(Path("/x/s.yaml"), Path("/a"))
    '/x/s.yaml'
    """
    try:
        return str(path.relative_to(start))
    except ValueError:
        return str(path)


__all__ = ["SpecFile", "display_path"]
