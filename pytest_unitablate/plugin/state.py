"""What the plugin keeps for one pytest run, in ``config.stash`` (torch-free).

Every other plugin module reads the run's state through :func:`get_state`; none of them
imports the hooks module, so the hooks sit on top and nothing imports back into them.

Example (inside a hook or an item)::

    state = get_state(item.config)
    state.records.append({...})
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_unitablate.plugin.session import UnitAblateSession
    from pytest_unitablate.spec.model import Spec


class UnitAblateWarning(pytest.PytestWarning):
    """An expectation that passed inside its warn band, or an environment drift."""


@dataclass
class PluginState:
    """What the plugin keeps for one pytest run (``config.stash``)."""

    specs: list[Path]
    device: str
    seed: int | None
    report_path: Path | None
    record_mode: str
    record_level: float
    is_worker: bool
    records: list[dict[str, Any]] = field(default_factory=list)
    collected_specs: set[Path] = field(default_factory=set)
    recorded: list[str] | None = None
    provenance_checked: set[str] = field(default_factory=set)
    _runtime: UnitAblateSession | None = None

    def runtime(self) -> UnitAblateSession:
        if self._runtime is None:
            from pytest_unitablate.plugin.session import UnitAblateSession

            self._runtime = UnitAblateSession(device=self.device, seed=self.seed)
        return self._runtime

    def rerun_command(self, spec: Spec, item_id: str, mode: str) -> str:
        return (f"pytest --unitablate-spec {shlex.quote(str(spec.path))} "
                f"--unitablate-record-mode={mode} -k {shlex.quote(item_id)}")


STATE_KEY = pytest.StashKey[PluginState]()


def get_state(config: pytest.Config) -> PluginState:
    """The run's :class:`PluginState` (created in ``pytest_configure``)."""
    return config.stash[STATE_KEY]
