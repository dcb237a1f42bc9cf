"""The pytest hooks of pytest-unitablate (torch-free: torch loads when a spec item runs).

Installed, the plugin only adds its options and the ``unitablate`` marker; it imports
neither torch nor numpy and touches no file until a spec is asked for, with
``--unitablate-spec PATH`` (repeatable), the ini key ``unitablate_spec``, or a spec file
given as a positional argument. Disable it with ``-p no:unitablate``.

Usage::

    pytest --unitablate-spec specs/resnet.yaml --unitablate-report out/unitablate.json
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_unitablate.errors import torch_missing
from pytest_unitablate.plugin.options import add_options, read_settings, weights_env
from pytest_unitablate.plugin.state import STATE_KEY, PluginState


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "unitablate: a unit-ablation check collected from a pytest-unitablate spec")
    settings = read_settings(config)
    mode = settings.record_mode
    if mode != "none" and not settings.record_force:
        from pytest_unitablate.plugin.record_mode import ci_environment

        var = ci_environment()
        if var is not None:
            raise pytest.UsageError(
                f"refusing --unitablate-record-mode={mode}: the {var} environment variable "
                f"says this is a CI run, where thresholds must not be rewritten. Record "
                f"locally and commit the spec, or add --unitablate-record-force.")
    state = PluginState(
        settings=settings, is_worker=hasattr(config, "workerinput"),
        invocation_args=tuple(str(a) for a in config.invocation_params.args),
        weights_env=lambda: weights_env(config),
    )
    from pytest_unitablate.plugin.progress import Progress

    state.progress = Progress(config, settings.progress, is_worker=state.is_worker)
    config.stash[STATE_KEY] = state
    config.pluginmanager.register(_RecordCollector(state), "unitablate-records")
    if not settings.specs:
        return
    missing = torch_missing("--unitablate-spec")
    if missing is not None:
        raise pytest.UsageError(missing)
    root = Path(config.invocation_params.dir)
    for spec in settings.specs:
        path = spec if spec.is_absolute() else root / spec
        if not path.exists():
            raise pytest.UsageError(f"--unitablate-spec {spec}: no such file or directory")
        state.specs.append(path.resolve())
    if settings.cache and getattr(config, "cache", None) is not None:
        try:
            state.cache_dir = config.cache.mkdir("unitablate")
        except OSError as exc:  # pytest itself only warns about an unusable cache_dir
            from pytest_unitablate.plugin.state import UnitAblateWarning

            config.issue_config_time_warning(UnitAblateWarning(
                f"the evaluation cache is off for this run: pytest's cache directory cannot "
                f"hold it ({type(exc).__name__}: {exc})"), stacklevel=2)
    _add_collection_roots(config, state.specs, root, settings.specs_from_cli)


def _add_collection_roots(config: pytest.Config, specs: list[Path], root: Path,
                          from_cli: bool) -> None:
    """Make pytest collect the spec files.

    pytest has no public hook that adds a collection root, so the spec paths join
    ``config.args`` (the documented Config attribute pytest collects from, with
    ``Config.args_source`` saying where it came from). Specs named on the command line with
    no positional arguments *replace* the default roots (testpaths), so ``pytest
    --unitablate-spec specs/x.yaml`` runs that spec and nothing else. Otherwise they are
    added, except a spec the positional arguments already name, as a path or as a node id
    (``specs/x.yaml::layer3.0-u0-four-min_drop``): adding its path would collect the whole
    file and defeat the node id an IDE passes. xdist workers re-parse the same invocation
    and re-run this hook, so every worker collects exactly what the controller would.
    """
    spec_args = [str(p) for p in specs]
    if from_cli and config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = spec_args
        return
    named = {str(Path(root, a.split("::", 1)[0]).resolve()) for a in config.args}
    config.args = [*config.args, *(a for a in spec_args if a not in named)]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    state = parent.config.stash.get(STATE_KEY, None)
    # pytest drops an argument that lies inside another one (``.`` and ``./a.yaml``) from
    # its initial paths, so the spec list is checked directly too.
    wanted = parent.session.isinitpath(file_path) or (
        state is not None
        and any(file_path.resolve().is_relative_to(s) for s in state.specs)
    )
    if not wanted:
        return None
    from pytest_unitablate.spec.loader import is_spec_file

    if not is_spec_file(file_path):
        return None
    from pytest_unitablate.plugin.collector import SpecFile

    if state is not None:
        state.collected_specs.add(file_path.resolve())
    spec_file: pytest.Collector = SpecFile.from_parent(parent, path=file_path)
    return spec_file


def pytest_collection_finish(session: pytest.Session) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    if state is None:
        return
    for spec in state.specs:
        found = any(c == spec or c.is_relative_to(spec) for c in state.collected_specs)
        if not found and spec.is_file() and not spec.read_text(errors="replace").strip():
            raise pytest.UsageError(f"--unitablate-spec {spec}: the file is empty (a spec "
                                    f"starts with 'unitablate: 1', then model, data, checks)")
        if not found:
            raise pytest.UsageError(
                f"--unitablate-spec {spec}: no spec collected from it (a spec file needs a "
                f"top-level 'unitablate: 1' key and a .yaml/.yml name)")


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash.get(STATE_KEY, None)
    if state is None or not state.specs:
        return None
    root = Path(config.rootpath)
    names = ", ".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
                      for p in state.specs)
    extra = f", record mode {state.record_mode}" if state.record_mode != "none" else ""
    return f"unitablate: {names} (device {state.device}, seed {state.settings.seed}{extra})"


class _RecordCollector:
    """Collects every spec item's record from its test reports (on the xdist controller,
    reports of all workers arrive here)."""

    def __init__(self, state: PluginState) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        from pytest_unitablate.plugin.report import record_from_report

        if report.when == "call" or (report.when == "setup" and not report.passed):
            record = record_from_report(report)
            if record is not None:
                # keyed by node id: a rerun (pytest-rerunfailures) replaces the earlier try
                self.state.records[report.nodeid] = record
        if report.failed and getattr(report, "unitablate", None) is None:
            # a test that is not a spec item failed: the run is not "only the spec is wrong"
            self.state.other_failures.add(report.nodeid)
        elif report.failed:
            self.state.other_failures.discard(report.nodeid)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist workers, spread spec items so that neighbouring runs of items (which
    xdist hands to different workers) work on different layers, and the items of one
    check stay together (:mod:`~pytest_unitablate.plugin.schedule`); serial order is
    untouched.

    Every worker computes the same order (it depends on the collection alone), as xdist
    requires. Non-spec items keep their places.
    """
    state = config.stash.get(STATE_KEY, None)
    if state is None or not state.is_worker or not state.specs:
        return
    from pytest_unitablate.plugin.item import UnitAblateItem
    from pytest_unitablate.plugin.schedule import spread

    slots = [i for i, item in enumerate(items) if isinstance(item, UnitAblateItem)]
    spec_items = [items[i] for i in slots]
    keys = []
    for item in spec_items:
        assert isinstance(item, UnitAblateItem)
        keys.append(((str(item.spec.path), item.key.check.layer), id(item.key.check)))
    for i, position in zip(slots, spread(keys), strict=True):
        items[i] = spec_items[position]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach a spec item's numbers to its report as ``report.unitablate``.

    Reports carry extra attributes across xdist (they are serialized with their
    ``__dict__``), so the controller gets every worker's numbers without
    ``user_properties``, which the default JUnit family (xunit2) may not hold.
    """
    report = yield
    record = getattr(item, "unitablate_record", None)
    if record is not None:
        report.unitablate = dict(record)  # type: ignore[attr-defined]
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    if state is not None and state.torch_missing:
        session.exitstatus = pytest.ExitCode.USAGE_ERROR  # as with --unitablate-spec
    if state is None or state.is_worker:
        return  # files are written by the controller only
    if state.specs or state.collected_specs or state.records:
        _write_outputs(session, state)


def _environment(state: PluginState) -> dict[str, Any]:
    from pytest_unitablate.version import __version__

    torch_version = None
    if "torch" in sys.modules:
        torch_version = str(sys.modules["torch"].__version__)
    dtype = state.dtype
    records = list(state.records.values())
    recs = [r for r in records if r.get("torch_version")]
    if recs:
        torch_version = recs[0]["torch_version"]
    return {"pytest_unitablate_version": __version__, "torch_version": torch_version,
            "device": state.device, "dtype": dtype or _first(records, "dtype"),
            "chosen_by": state.chosen_by()}


def _commit(folder: Path) -> str | None:
    """The git commit checked out in ``folder``, when it is a git work tree."""
    import subprocess

    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _first(records: list[dict[str, Any]], name: str) -> Any:
    return next((r[name] for r in records if r.get(name) is not None), None)


_FAILED_WEIGHTS = "unitablate/failed_weights"


def _weights_against_last_failure(config: pytest.Config, state: PluginState,
                                  records: list[dict[str, Any]]) -> list[str]:
    """Remember the weights of each spec that failed (pytest's cache), and in record mode
    ``failed`` or ``calibrate`` say when the weights measured now are not those: the
    re-record command run without the variable that chose the candidate measures the
    reference, finds nothing failing, and records nothing."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return []
    from pytest_unitablate.verdicts.records import tested

    known: dict[str, Any] = dict(cache.get(_FAILED_WEIGHTS, {}) or {})
    notes = []
    failing = {str(r.get("spec")) for r in records if r.get("outcome") in ("failed", "error")}
    chosen = state.chosen_by()
    for entry in tested(records):
        spec, sha = str(entry["spec"]), entry.get("weights_sha256")
        last = known.get(spec)
        if state.record_mode in ("failed", "calibrate") and isinstance(last, dict) and sha \
                and last.get("weights_sha256") not in (None, sha):
            how = " ".join(f"{k}={v}" for k, v in (last.get("chosen_by") or {}).items())
            ckpt = f", {last['checkpoint']}" if last.get("checkpoint") else ""
            notes.append(
                f"{spec}: record mode measured weights sha256 {sha}, not the weights that "
                f"failed in the last run (sha256 {last['weights_sha256']}{ckpt}"
                f"{', chosen by ' + how if how else ''}); rerun with what chose them"
                f"{' (' + how + ')' if how else ''} to re-record their thresholds")
        if state.record_mode == "none" and spec in failing and sha:
            known[spec] = {"weights_sha256": sha, "checkpoint": entry.get("checkpoint"),
                           "chosen_by": chosen}
        elif state.record_mode == "none":  # the last run of this spec did not fail
            known.pop(spec, None)
    cache.set(_FAILED_WEIGHTS, known)  # pytest only warns about an unwritable cache_dir
    return notes


def _write_outputs(session: pytest.Session, state: PluginState) -> None:
    from pytest_unitablate.verdicts.records import build_report, build_run, run_path, write_json

    records = list(state.records.values())
    where = Path(session.config.invocation_params.dir)
    state.weights_notes = _weights_against_last_failure(session.config, state, records)
    if state.record_mode != "none":  # first: calibrate annotates the records it judged
        from pytest_unitablate.plugin.record_mode import apply_recorded

        state.recorded = apply_recorded(records, state.record_mode, state.record_level,
                                        _environment(state))
        if any(r.get("unguardable") for r in records) and \
                session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if session.exitstatus == pytest.ExitCode.TESTS_FAILED and not state.other_failures:
        from pytest_unitablate.verdicts.records import spec_problems_only

        if spec_problems_only(records):  # the spec does not fit the model: exit 2
            session.exitstatus = pytest.ExitCode.INTERRUPTED
    if state.report_path is not None:
        write_json(where / state.report_path, build_report(records, _environment(state)))
        write_json(where / run_path(state.report_path), build_run(records))
    if state.settings.html is not None:
        from pytest_unitablate.analysis.review_figures import review_figures
        from pytest_unitablate.verdicts.records import sort_records
        from pytest_unitablate.verdicts.review_page import write_review_page

        write_review_page(where / state.settings.html, records,
                          {**_environment(state), "commit": _commit(where)},
                          figures=review_figures(sort_records(records)))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    """The "unitablate" summary, on the controller only.

    ``auto`` (the default) follows pytest's verbosity: the table with ``-v``, nothing with
    ``-qq``, one line otherwise.
    """
    state = config.stash.get(STATE_KEY, None)
    if state is None or state.is_worker or not state.records:
        return
    from pytest_unitablate.verdicts.records import (
        SPEC_PROBLEMS_LINE,
        engine_lines,
        format_table,
        provenance_lines,
        sort_records,
        spec_lines,
        spec_problems_line,
        spec_problems_only,
        summary_line,
    )

    records = sort_records(state.records.values())
    mode = state.settings.summary
    if mode == "auto":
        verbosity = config.get_verbosity()
        mode = "table" if verbosity > 0 else "none" if verbosity < -1 else "line"
    if mode == "table":
        terminalreporter.write_sep("=", "unitablate summary")
        for line in spec_lines(records):
            terminalreporter.write_line(line)
        terminalreporter.write_line(format_table(records))
        # how the engine ran: -vv, or a table asked for by name (the run file has it too)
        if config.get_verbosity() > 1 or state.settings.summary == "table":
            for line in engine_lines(records):
                terminalreporter.write_line(f"scan engine: {line}")
            cache_line = state.cache_summary()
            if cache_line:
                terminalreporter.write_line(cache_line)
    if mode in ("line", "table"):
        terminalreporter.write_line(summary_line(records, state.report_path))
    if not state.other_failures and spec_problems_only(records):
        terminalreporter.write_line(SPEC_PROBLEMS_LINE, red=True)
    else:
        line = spec_problems_line(records)
        if line:
            terminalreporter.write_line(line, red=True)
    if mode != "none":
        for line in provenance_lines(records):
            terminalreporter.write_line(f"unitablate: {line}", yellow=True)
    for line in state.weights_notes:
        terminalreporter.write_line(f"unitablate: WARNING {line}", yellow=True)
    for line in state.recorded or []:
        terminalreporter.write_line(f"unitablate: {line}")
    for field, why in (
            ("disarmed", "the measured bound would make a check that cannot fail (remove the "
                         "check or choose another unit)"),
            ("weak", "the bound would guard too little of the measured effect (more "
                     "examples, or a log-prob constraint)"),
            ("unguardable", "honest reference models already reach what a destroyed unit "
                            "shows (any_unit, a log-prob constraint or another layer)")):
        refused = [r for r in records if r.get(field)]
        if refused:
            terminalreporter.write_line(
                f"unitablate: {len(refused)} threshold(s) NOT recorded: {why}:", red=True)
            for r in refused:
                terminalreporter.write_line(f"  {r['spec']}:{r['line']}: {r['id']}")
