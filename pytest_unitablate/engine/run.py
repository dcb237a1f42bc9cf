"""``run_spec``: does this model still meet this spec? From Python, without pytest.

The same engine as the pytest plugin evaluates every item of a spec and returns the
records of the JSON report. Model and data references that are names resolve from
``fixtures=``; ``package.module:callable`` references resolve themselves; a name that is
neither is a located error of every item (outcome ``error``), as a missing fixture is in
pytest. A spec with problems raises :class:`~pytest_unitablate.errors.SpecError` (every
problem, ``path:line: message``), as pytest's collection error does.

Check marks act as they do in pytest: ``skip`` and a true ``skipif`` skip the item,
``xfail`` turns a failure into ``xfailed`` and a pass into ``xpassed`` (``failed`` with
``strict=True``); other marks are pytest's business and are ignored here.

Every call makes a new engine: results are memoised within the call only (a training loop
that calls it every N steps evaluates the weights of that moment). Pass
``cache_dir=`` for an on-disk store keyed by the weights' hash.

Example::

    from pytest_unitablate import run_spec

    run = run_spec("specs/resnet.yaml",
                   fixtures={"digits_resnet": model, "digits_test": loader})
    for record in run.failed:
        print(record["id"], record["drop"], record["threshold"])
    print(run.text())            # failure texts and the summary line
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_unitablate.engine.engine import Engine
from pytest_unitablate.engine.refs import Lookup, mapping_lookup
from pytest_unitablate.engine.settings import (
    EngineSettings,
    ProgressFactory,
    device_problem,
    parse_size,
)
from pytest_unitablate.engine.store import DiskStore, NullStore, Store
from pytest_unitablate.errors import ItemProblem, Problem, SpecError
from pytest_unitablate.spec.ids import ItemKey, item_ids
from pytest_unitablate.spec.loader import load_spec
from pytest_unitablate.spec.model import Mark, Spec
from pytest_unitablate.verdicts.failure import problem_text
from pytest_unitablate.verdicts.records import (
    FIELDS,
    build_report,
    build_run,
    format_table,
    provenance_lines,
    run_path,
    sort_records,
    static_record,
    summary_line,
    write_json,
)

#: outcomes that make a run fail (and ``check`` exit 1)
FAILING = ("failed", "error")


@dataclass(frozen=True)
class ItemOutcome:
    """One item's outcome, with everything the engine said about it."""

    id: str
    #: passed, failed (a threshold missed, or a problem found while measuring it), error
    #: (the model or data could not be had), skipped, xfailed, xpassed: as pytest says
    outcome: str
    message: str | None  # the failure text, the located problem or the skip reason
    record: dict[str, Any]  # every number the engine recorded (a superset of FIELDS)
    warnings: tuple[str, ...] = ()


#: The record fields record mode ``calibrate`` fills in after the run.
CALIBRATION_FIELDS = ("calibration_models", "calibration_low", "calibration_high",
                      "unguardable")


@dataclass
class SpecRun:
    """The result of :func:`run_spec`."""

    spec: Spec
    items: list[ItemOutcome]
    environment: dict[str, Any] = field(default_factory=dict)
    #: what record mode wrote (the lines the plugin prints in its summary)
    recorded: list[str] = field(default_factory=list)

    def record(self, mode: str, level: float) -> list[str]:
        """Write what record mode ``mode`` selects from this run's items into the spec
        (and its signatures and calibration files); the summary lines are kept in
        :attr:`recorded` and returned."""
        from pytest_unitablate.verdicts.recording import apply_recorded

        records = [{**i.record, "outcome": i.outcome} for i in self.items]
        self.recorded = apply_recorded(records, mode, level, self.environment)
        for item, record in zip(self.items, records, strict=True):  # calibration says
            item.record.update({k: record[k] for k in CALIBRATION_FIELDS if k in record})
        return self.recorded

    @property
    def unguardable(self) -> list[str]:
        """Why record mode ``calibrate`` wrote no threshold for some items (one text each)."""
        return [str(i.record["unguardable"]) for i in self.items if i.record.get("unguardable")]

    @property
    def records(self) -> list[dict[str, Any]]:
        """One dict per item with the JSON report's fields (``outcome`` included), in the
        report's order (spec, line, id)."""
        full = [{**item.record, "outcome": item.outcome} for item in self.items]
        return [{name: r.get(name) for name in FIELDS} for r in sort_records(full)]

    @property
    def failed(self) -> list[dict[str, Any]]:
        """The records of the items that failed (a threshold missed, or a located problem
        found while measuring: an unknown layer, NaN logits) or errored (the model or data
        could not be had: an unknown name, an import that fails, data that cannot replay)."""
        return [r for r in self.records if r["outcome"] in FAILING]

    @property
    def ok(self) -> bool:
        """No item failed or errored."""
        return not self.failed

    def report(self) -> dict[str, Any]:
        """The JSON report document, as ``--unitablate-report`` writes it."""
        return build_report([{**i.record, "outcome": i.outcome} for i in self.items],
                            self.environment)

    def run_facts(self) -> dict[str, Any]:
        """What the run file holds: the scan engines this run chose (by timing, partly)."""
        return build_run([i.record for i in self.items])

    def write_report(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`report` to ``path`` and :meth:`run_facts` beside it
        (``r.json`` -> ``r.run.json``), atomically, as ``--unitablate-report`` does."""
        write_json(path, self.report())
        write_json(run_path(path), self.run_facts())

    def text(self, *, table: bool = False, report: Path | None = None) -> str:
        """What a terminal shows: each failure's text (as pytest prints it), optionally
        the table of every item, and the summary line."""
        parts = []
        full = [{**i.record, "outcome": i.outcome} for i in self.items]  # check_index too
        shown: dict[str, list[str]] = {}  # an error message -> the items that had it
        for item in self.items:
            if item.outcome in FAILING:
                label = "FAILED" if item.outcome == "failed" else "ERROR"
                if item.outcome == "error" and item.message in shown:
                    shown[str(item.message)].append(item.id)
                    continue  # one bind error (an unknown model) is every item's: once
                if item.outcome == "error":
                    shown[str(item.message)] = []
                parts.append(f"{label} {self.spec.path}::{item.id}\n{item.message}\n")
        for message, more in shown.items():
            if more:
                where = parts.index(next(p for p in parts if p.endswith(f"\n{message}\n")))
                ids = ", ".join(more[:5]) + (" ..." if len(more) > 5 else "")
                parts[where] += (f"(the same error for {len(more)} more item"
                                 f"{'s' * (len(more) != 1)} of this spec: {ids})\n")
        if table:
            parts.append(format_table(sort_records(full)))
        # recorded in another environment (torch, device, dtype, data): once per spec
        parts += [f"unitablate: {line}" for line in provenance_lines(
            [i.record for i in self.items])]
        parts.append(summary_line(sort_records(full), report))
        return "\n".join(parts)


def run_spec(spec: str | os.PathLike[str] | Spec, *,
             fixtures: Mapping[str, Any] | None = None, device: str = "cpu",
             seed: int | None = 0, cache_dir: str | os.PathLike[str] | None = None,
             memory_budget: int | str | None = None, full_sweeps: bool = False,
             plain_passes: bool = False, progress: ProgressFactory | None = None,
             full_trace: bool = False, record_mode: str = "none",
             record_force: bool = False) -> SpecRun:
    """Evaluate every item of ``spec`` and judge it; see the module docstring.

    ``fixtures`` maps the names the spec's ``model:``/``data:``/``ranking_data:`` use to
    their objects (a model already on ``device``, data as for ``evaluate()``). ``seed``:
    ``torch.manual_seed`` before every pass (``None``: never). ``cache_dir``: keep
    results on disk there (shared with other processes; keyed by weights, data and
    versions). ``memory_budget``: bytes (or ``"512MiB"``) a layer sweep's stacked passes
    may hold. A bad ``device``, ``seed`` or ``memory_budget`` raises at once (``ValueError``
    or ``TypeError``); a missing spec file is ``FileNotFoundError``.
    ``full_sweeps``: layer-wide checks evaluate every unit. ``plain_passes``: named checks
    get their own forward passes. ``progress(label, total)``: a callback factory for long
    sweeps. ``full_trace``: let unexpected exceptions through instead of recording them
    as ``error`` items. ``record_mode``: as ``--unitablate-record-mode`` (``calibrate``
    adds this model to ``<spec>.calibration.json`` and writes every threshold calibrated
    from 3 or more models); the lines the plugin prints are in :attr:`SpecRun.recorded`.
    Refused (``ValueError``) when a CI variable is set, unless ``record_force``.
    """
    if not isinstance(spec, Spec) and not Path(spec).is_file():
        raise FileNotFoundError(f"run_spec: no spec file {spec}")
    problem = device_problem(str(device)) or cuda_problem(str(device))
    if problem is not None:
        raise ValueError(f"run_spec(device={device!r}): {problem}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"run_spec(seed=...) takes an int or None, got {seed!r}")
    try:
        budget = parse_size(memory_budget) if isinstance(memory_budget, str) \
            else memory_budget
    except ValueError as exc:
        raise ValueError(f"run_spec(memory_budget=...) {exc}") from None
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                               or budget < 1):
        raise ValueError(f"run_spec(memory_budget=...) takes a positive number of bytes or "
                         f"a size such as '512MiB', got {memory_budget!r}")
    from pytest_unitablate.verdicts.recording import record_problem

    refused = record_problem(record_mode, record_force)
    if refused is not None:
        raise ValueError(f"run_spec(record_mode={record_mode!r}): {refused}")
    settings = EngineSettings(device=str(device), seed=seed, full_trace=full_trace,
                              memory_budget=budget, full_sweeps=full_sweeps,
                              plain_passes=plain_passes, progress=progress,
                              full_sweeps_option="run_spec(full_sweeps=True)",
                              device_option="run_spec(device=...)", record_mode=record_mode)
    store: Store = DiskStore(Path(cache_dir)) if cache_dir is not None else NullStore()
    run = evaluate_spec(spec, mapping_lookup(dict(fixtures or {})), Engine(settings, store))
    if record_mode != "none":
        run.record(record_mode, settings.record_level)
    return run


def cuda_problem(device: str) -> str | None:
    """Why a CUDA (or MPS) device cannot be used here, or ``None``."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return f"{device!r}: CUDA is not available to this torch ({torch.__version__})"
    mps = getattr(torch.backends, "mps", None)
    if device.startswith("mps") and not (mps is not None and mps.is_available()):
        return f"{device!r}: MPS is not available to this torch"
    return None


def evaluate_spec(spec: str | os.PathLike[str] | Spec, lookup: Lookup | None,
                  engine: Engine) -> SpecRun:
    """Every item of ``spec`` through ``engine``, names resolved by ``lookup``."""
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    keys = item_ids(spec)
    if not keys:
        raise SpecError([Problem(str(spec.path), 1, "the spec yields no test items")])
    try:
        subject: Any = engine.bind(spec, lookup)
        problem = None
    except ItemProblem as exc:
        subject, problem = None, problem_text(str(exc))
    items = []
    for key in keys:
        record_only = static_record(spec, key)
        skip = _skip_reason(key.check.marks)
        if skip is not None:
            items.append(ItemOutcome(key.id, "skipped", skip, record_only))
        elif problem is not None:
            record = {**record_only, "reason": problem.split("\n", 1)[0]}
            items.append(_with_xfail(key, ItemOutcome(key.id, "error", problem, record)))
        else:
            items.append(_with_xfail(key, _run(engine, spec, subject, key)))
    return SpecRun(spec, items, _environment(engine))


def _run(engine: Engine, spec: Spec, subject: Any, key: ItemKey) -> ItemOutcome:
    try:
        result = engine.run_item(spec, subject, key)
    except Exception as exc:
        if engine.settings.full_trace:
            raise
        message = (f"{spec.where(key.line)}: unexpected error while running {key.id}: "
                   f"{type(exc).__name__}: {exc}\n  (pass "
                   f"{engine.settings.full_trace_option} for the traceback)")
        return ItemOutcome(key.id, "failed", message,
                           {**static_record(spec, key), "reason": message.split("\n", 1)[0]})
    # as in pytest: a problem found while measuring fails the item (its call phase);
    # ``error`` is for the model and data that could not be had (its setup phase)
    outcome = "failed" if result.status == "error" else result.status
    return ItemOutcome(key.id, outcome, result.message, result.record,
                       tuple(result.warnings))


def _skip_reason(marks: tuple[Mark, ...]) -> str | None:
    """The reason a ``skip`` or true ``skipif`` mark gives, else ``None``."""
    for mark in marks:
        kwargs = dict(mark.kwargs)
        if mark.name == "skip":
            return str(kwargs.get("reason", mark.args[0] if mark.args else "skipped"))
        if mark.name == "skipif" and any(_true(c) for c in _conditions(mark)):
            return str(kwargs.get("reason", "skipif"))
    return None


def _conditions(mark: Mark) -> tuple[object, ...]:
    """A mark's conditions: its positional arguments, or its ``condition=``."""
    kwargs = dict(mark.kwargs)
    return mark.args or ((kwargs["condition"],) if "condition" in kwargs else ())


def _true(condition: object) -> bool:
    """A mark condition: a bool, or a string evaluated as pytest does (``os``, ``sys``,
    ``platform`` in its namespace)."""
    if isinstance(condition, str):
        return bool(eval(condition, {"os": os, "sys": sys, "platform": platform}))
    return bool(condition)


def _with_xfail(key: ItemKey, item: ItemOutcome) -> ItemOutcome:
    """An ``xfail`` mark (its condition true) turns failures into ``xfailed`` and a pass
    into ``xpassed`` (into ``failed`` with ``strict=True``)."""
    for mark in key.check.marks:
        if mark.name != "xfail":
            continue
        kwargs = dict(mark.kwargs)
        conditions = _conditions(mark)
        if conditions and not any(_true(c) for c in conditions):
            continue
        reason = str(kwargs.get("reason", ""))
        if item.outcome in FAILING:
            return ItemOutcome(item.id, "xfailed", reason or item.message, item.record,
                               item.warnings)
        if item.outcome == "passed":
            outcome = "failed" if kwargs.get("strict") else "xpassed"
            message = f"[XPASS(strict)] {reason}" if outcome == "failed" else None
            return ItemOutcome(item.id, outcome, message, item.record, item.warnings)
    return item


def _environment(engine: Engine) -> dict[str, Any]:
    """The report's run fields (as the plugin writes them)."""
    from pytest_unitablate.version import __version__

    torch = sys.modules.get("torch")
    return {"pytest_unitablate_version": __version__,
            "torch_version": str(torch.__version__) if torch is not None else None,
            "device": engine.settings.device, "dtype": engine.dtype}


__all__ = ["FAILING", "ItemOutcome", "SpecRun", "evaluate_spec", "run_spec"]
