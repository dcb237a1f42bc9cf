"""The pytest layer of pytest-unitablate (torch-free at import).

This package is the ``pytest11`` entry point (``unitablate = "pytest_unitablate.plugin"``);
its hook functions live in :mod:`pytest_unitablate.plugin.hooks`, which this package names
in ``pytest_plugins`` so that pytest registers it with the entry point (and not at all under
``-p no:unitablate``). The other modules, one job each:

* ``options``: the ``--unitablate-*`` options and ini keys, read into ``Settings``;
* ``state``: the run's state in ``config.stash``;
* ``collector``: a spec file becomes test items;
* ``item``: one constraint's test item (orchestration only);
* ``session``: model, data and every evaluation, loaded and computed once per process;
* ``report``: records, the JSON report and the terminal table;
* ``record_mode``: which thresholds record mode writes.

Disable the plugin with ``-p no:unitablate``.
"""

from __future__ import annotations

from pytest_unitablate.plugin.state import UnitAblateWarning, get_state

pytest_plugins = ["pytest_unitablate.plugin.hooks"]

__all__ = ["UnitAblateWarning", "get_state"]
