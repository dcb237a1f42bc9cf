"""What the plugin keeps for one pytest run, in ``config.stash`` (torch-free).

Every other plugin module reads the run's state through :func:`get_state`; none of them
imports the hooks module, so the hooks sit on top and nothing imports back into them.

Example (inside a hook or an item)::

    state = get_state(item.config)
    state.settings.record_mode      # "none"
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_unitablate.engine.engine import Engine
    from pytest_unitablate.plugin.options import Settings


class UnitAblateWarning(pytest.PytestWarning):
    """An expectation that passed inside its warn band, or an environment drift."""


@dataclass
class PluginState:
    """The run's settings plus what it gathers: collected specs and every item's record.

    ``records`` maps node ids to records, so a rerun item (pytest-rerunfailures) or a
    report that arrives twice keeps only its last outcome.
    """

    settings: Settings
    specs: list[Path] = field(default_factory=list)  # resolved --unitablate-spec paths
    is_worker: bool = False
    invocation_args: tuple[str, ...] = ()
    #: the environment variables that choose the weights under test (read when needed)
    weights_env: Callable[[], Sequence[str]] = tuple
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    collected_specs: set[Path] = field(default_factory=set)
    recorded: list[str] | None = None
    #: record mode: what it measured is not the weights that failed last (summary lines)
    weights_notes: list[str] = field(default_factory=list)
    #: node ids of failed tests that are not spec items (the run then exits 1, not 2)
    other_failures: set[str] = field(default_factory=set)
    #: where the evaluation cache lives (None: off, or no pytest cache provider)
    cache_dir: Path | None = None
    #: makes the per-sweep progress callbacks (plugin.progress.Progress), set at configure
    progress: Any = None
    #: a spec file was collected without torch: the run ends with exit 4 (usage error)
    torch_missing: bool = False
    _engine: Engine | None = None

    @property
    def device(self) -> str:
        return self.settings.device

    @property
    def record_mode(self) -> str:
        return self.settings.record_mode

    @property
    def record_level(self) -> float:
        return self.settings.record_level

    @property
    def report_path(self) -> Path | None:
        return self.settings.report

    def engine(self) -> Engine:
        """This process's engine (imports torch on first use): every evaluation of the
        session, computed once, in a store under pytest's cache directory."""
        if self._engine is None:
            from pytest_unitablate.engine.engine import Engine
            from pytest_unitablate.engine.settings import EngineSettings
            from pytest_unitablate.engine.store import DiskStore

            worker = (0, 1)
            if self.is_worker:
                share_threads()
                worker = xdist_worker()
            s = self.settings
            settings = EngineSettings(
                device=s.device, seed=s.seed, full_trace=s.full_trace,
                memory_budget=s.memory_budget, full_sweeps=s.full_sweeps,
                plain_passes=s.plain_passes, record_mode=s.record_mode,
                record_level=s.record_level, record_floor=s.record_floor,
                record_min_share=s.record_min_share, worker=worker,
                rerun=self.rerun_command, run_facts=True, weights_source=self.weights_file,
                progress=self.progress.for_sweep if self.progress is not None else None)
            self._engine = Engine(settings, DiskStore(self.cache_dir))
        return self._engine

    @property
    def dtype(self) -> str | None:
        """The dtype of the model this process evaluated (``None`` before any)."""
        return self._engine.dtype if self._engine is not None else None

    def cache_summary(self) -> str | None:
        """This process's cache line for the summary (serial runs: under xdist the counts
        live in the workers)."""
        if self._engine is None or not self._engine.store.enabled:
            return None
        return self._engine.store.summary()

    def chosen_by(self) -> dict[str, str]:
        """The variables of :attr:`weights_env` that are set, with their values: what
        chose the weights under test (``{"MODEL_WEIGHTS": "candidate.pt"}``)."""
        return {name: os.environ[name] for name in self.weights_env() if name in os.environ}

    def weights_file(self) -> str | None:
        """The first value of :meth:`chosen_by` that names an existing file (the weights
        under test, when the model's fixture did not say)."""
        return next((v for v in self.chosen_by().values() if os.path.isfile(v)), None)

    def rerun_command(self, mode: str) -> str:
        """The command the user ran, with ``--unitablate-record-mode=mode`` instead of any
        record mode it had, after the variables that chose the weights: it reproduces the
        run (same options, same model and data), so the thresholds are measured where they
        failed."""
        return rerun_command(self.invocation_args, mode, self.chosen_by())


def share_threads() -> int | None:
    """On an xdist worker, give torch its share of the CPUs: ``cpus // workers`` threads.

    torch sizes its intra-op pool for the whole machine in every process, so ``-n 2`` on
    two cores ran four busy threads on two cores, slower than one process. An explicit
    ``OMP_NUM_THREADS`` is left alone. Returns the thread count set (``None``: untouched).
    """
    if "OMP_NUM_THREADS" in os.environ:
        return None
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    threads = max(1, cpus // workers)
    torch.set_num_threads(threads)
    return threads


def xdist_worker() -> tuple[int, int]:
    """(index, count) of this xdist worker, from the variables xdist sets (``gw1`` -> 1).

    >>> import os; os.environ.update(PYTEST_XDIST_WORKER="gw1", PYTEST_XDIST_WORKER_COUNT="2")
    >>> xdist_worker()
    (1, 2)
    >>> for v in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"): del os.environ[v]
    """
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    index = int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0
    workers = max(1, int(count) if count.isdigit() else 1)
    return index % workers, workers


#: Options a re-record command leaves out: the record mode it replaces, and what only
#: shapes this run's outputs or processes (reports, xdist), so the command reads the same
#: whatever wrote the report (and the report holds the same bytes).
_DROPPED = frozenset({"--unitablate-record-mode", "--unitablate-report", "--unitablate-html",
                      "--junitxml", "--junit-xml", "-n", "--numprocesses", "--dist",
                      "--maxprocesses", "--unitablate-cache", "--unitablate-memory-budget",
                      "--unitablate-progress", "--unitablate-summary", "--basetemp"})
#: Flags it leaves out for the same reason (how the engine or the terminal ran).
_DROPPED_FLAGS = frozenset({"--unitablate-plain-passes", "--unitablate-full-sweeps", "-q", "-qq",
                            "-v", "-vv", "--quiet", "--verbose"})


def rerun_command(args: Sequence[str], mode: str, env: Mapping[str, str] | None = None
                  ) -> str:
    """``pytest <args>`` with the record mode replaced by ``mode``, after ``env`` (the
    variables that chose the weights).

    >>> rerun_command(["--unitablate-spec", "s.yaml", "--unitablate-record-mode", "new",
    ...                "--demo-checkpoint", "ft"], "failed")
    'pytest --unitablate-spec s.yaml --demo-checkpoint ft --unitablate-record-mode=failed'
    >>> rerun_command(["--unitablate-spec", "s.yaml", "-n", "2", "--unitablate-report=r.json",
    ...                "--junitxml", "j.xml", "-n4"], "failed", {"MODEL_WEIGHTS": "c 1.pt"})
    "MODEL_WEIGHTS='c 1.pt' pytest --unitablate-spec s.yaml --unitablate-record-mode=failed"
    """
    kept: list[str] = []
    skip = False
    for arg in args:
        name = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif arg in _DROPPED:  # the option's value is the next argument
            skip = True
        elif arg in _DROPPED_FLAGS:
            continue
        elif not (name in _DROPPED and "=" in arg) and not (
                arg.startswith("-n") and arg[2:].isdigit()):
            kept.append(arg)
    prefix = "".join(f"{name}={shlex.quote(value)} " for name, value in (env or {}).items())
    return prefix + shlex.join(["pytest", *kept, f"--unitablate-record-mode={mode}"])


STATE_KEY = pytest.StashKey[PluginState]()


def get_state(config: pytest.Config) -> PluginState:
    """The run's :class:`PluginState` (created in ``pytest_configure``)."""
    return config.stash[STATE_KEY]
