"""The pytest layer of pytest-unitablate (torch-free at import).

This package is the ``pytest11`` entry point (``unitablate = "pytest_unitablate.plugin"``);
its hook functions live in :mod:`pytest_unitablate.plugin.hooks` and are re-exported here so
that pytest finds them on the registered module. The other modules, one job each:

* ``state``: the run's state in ``config.stash``;
* ``collector``: a spec file becomes test items;
* ``item``: one constraint's test item (orchestration only);
* ``session``: model, data and every evaluation, loaded and computed once per process;
* ``report``: records, the JSON report and the terminal table;
* ``record_mode``: which thresholds record mode writes.

Disable the plugin with ``-p no:unitablate``.
"""

from __future__ import annotations

from pytest_unitablate.plugin.hooks import (
    pytest_addoption,
    pytest_collect_file,
    pytest_collection_finish,
    pytest_configure,
    pytest_report_header,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
from pytest_unitablate.plugin.state import UnitAblateWarning, get_state

__all__ = [
    "UnitAblateWarning",
    "get_state",
    "pytest_addoption",
    "pytest_collect_file",
    "pytest_collection_finish",
    "pytest_configure",
    "pytest_report_header",
    "pytest_sessionfinish",
    "pytest_terminal_summary",
]
