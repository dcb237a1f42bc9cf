"""Record mode on the controller (the plugin's name for :mod:`pytest_unitablate.verdicts.recording`,
which ``run_spec`` and ``check`` share).

Example::

    >>> from pytest_unitablate.plugin.record_mode import RECORD_MODES
    >>> RECORD_MODES
    ('none', 'new', 'failed', 'all', 'calibrate')
"""

from __future__ import annotations

from pytest_unitablate.verdicts.recording import (
    CI_VARIABLES,
    RECORD_MODES,
    RecordMode,
    apply_recorded,
    ci_environment,
    wanted,
)

__all__ = ["CI_VARIABLES", "RECORD_MODES", "RecordMode", "apply_recorded", "ci_environment",
           "wanted"]
