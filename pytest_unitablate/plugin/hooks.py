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
from pathlib import Path
from typing import Any

import pytest

from pytest_unitablate.plugin.record_mode import RECORD_MODES
from pytest_unitablate.plugin.state import STATE_KEY, PluginState

_DEVICE_PREFIXES = ("cpu", "cuda", "mps", "xpu", "meta")


# --- options ----------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unitablate", "unit ablation regression tests (pytest-unitablate)")
    group.addoption("--unitablate-spec", action="append", dest="unitablate_spec", default=[],
                    metavar="PATH", help="collect this spec file (repeatable); ini: "
                    "unitablate_spec. Default: none (plugin inactive)")
    group.addoption("--unitablate-device", dest="unitablate_device", default=None,
                    metavar="DEVICE", help="device the evaluation inputs go to; the model must "
                    "already be there (ini unitablate_device; default: cpu)")
    group.addoption("--unitablate-seed", dest="unitablate_seed", default=None, type=int,
                    metavar="N", help="torch.manual_seed before every evaluation (ini "
                    "unitablate_seed; default: 0)")
    group.addoption("--unitablate-report", dest="unitablate_report", default=None,
                    metavar="PATH.json", help="write one JSON record per spec item (ini "
                    "unitablate_report; default: no report)")
    group.addoption("--unitablate-html", dest="unitablate_html", default=None,
                    metavar="PATH.html", help="write a self-contained HTML page of the items' "
                    "outcomes (default: none)")
    group.addoption("--unitablate-record-mode", dest="unitablate_record_mode", default=None,
                    choices=RECORD_MODES, help="write measured thresholds back into the spec: "
                    "none (never write), new (fill null thresholds), failed (rewrite failing "
                    "ones; they still fail), all (rewrite all; they pass). ini "
                    "unitablate_record_mode; default: none")
    group.addoption("--unitablate-record-force", dest="unitablate_record_force",
                    action="store_true", default=False,
                    help="allow record mode when a CI environment variable is set")
    group.addoption("--unitablate-record-confidence", dest="unitablate_record_confidence",
                    default=None, type=float, metavar="LEVEL",
                    help="confidence level of the interval whose bound record mode writes and "
                    "failures show (default: 0.95)")
    group.addoption("--unitablate-full-trace", dest="unitablate_full_trace",
                    action="store_true", default=False,
                    help="show internal tracebacks instead of the short failure text")
    parser.addini("unitablate_spec", type="paths", default=[],
                  help="spec files collected in every run (pytest-unitablate)")
    parser.addini("unitablate_device", default="", help="default device (cpu)")
    parser.addini("unitablate_seed", default="", help="default torch seed (0)")
    parser.addini("unitablate_report", default="", help="default JSON report path")
    parser.addini("unitablate_record_mode", default="", help="default record mode (none)")


def _option(config: pytest.Config, name: str, default: str) -> str:
    """CLI beats ini beats default."""
    value = config.getoption(name)
    if value is not None:
        return str(value)
    ini = config.getini(name)
    return str(ini) if ini not in ("", None) else default


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "unitablate: a unit-ablation check collected from a pytest-unitablate spec")
    cli_specs = [Path(p) for p in config.getoption("unitablate_spec") or []]
    ini_specs = [Path(p) for p in config.getini("unitablate_spec") or []]
    specs = cli_specs or ini_specs
    device = _option(config, "unitablate_device", "cpu")
    if device.split(":")[0] not in _DEVICE_PREFIXES or (
        ":" in device and not device.split(":", 1)[1].isdigit()
    ):
        raise pytest.UsageError(
            f"--unitablate-device {device!r} is not a torch device (cpu, cuda, cuda:1, mps)")
    seed_text = _option(config, "unitablate_seed", "0")
    try:
        seed = int(seed_text)
    except ValueError:
        raise pytest.UsageError(f"unitablate_seed must be an integer, got {seed_text!r}") \
            from None
    mode = _option(config, "unitablate_record_mode", "none")
    if mode not in RECORD_MODES:
        raise pytest.UsageError(
            f"unitablate_record_mode must be one of {', '.join(RECORD_MODES)}, got {mode!r}")
    level = config.getoption("unitablate_record_confidence") or 0.95
    if not 0.5 <= level < 1.0:
        raise pytest.UsageError(
            f"--unitablate-record-confidence must be in [0.5, 1), got {level}")
    is_worker = hasattr(config, "workerinput")
    if mode != "none" and not config.getoption("unitablate_record_force"):
        from pytest_unitablate.plugin.record_mode import ci_environment

        var = ci_environment()
        if var is not None:
            raise pytest.UsageError(
                f"refusing --unitablate-record-mode={mode}: the {var} environment variable "
                f"says this is a CI run, where thresholds must not be rewritten. Record "
                f"locally and commit the spec, or add --unitablate-record-force.")
    report = _option(config, "unitablate_report", "")
    state = PluginState(
        specs=[], device=device, seed=seed, report_path=Path(report) if report else None,
        record_mode=mode, record_level=float(level), is_worker=is_worker,
    )
    config.stash[STATE_KEY] = state
    config.pluginmanager.register(_RecordCollector(state), "unitablate-records")
    if not specs:
        return
    root = Path(config.invocation_params.dir)
    resolved = []
    for spec in specs:
        path = spec if spec.is_absolute() else root / spec
        if not path.exists():
            raise pytest.UsageError(f"--unitablate-spec {spec}: no such file or directory")
        resolved.append(path.resolve())
    state.specs = resolved
    # Collection roots. pytest has no public hook that adds a collection root, so the spec
    # paths join ``config.args`` (the documented Config attribute pytest collects from,
    # with ``Config.args_source`` saying where it came from). Specs named on the command
    # line with no positional arguments *replace* the default roots (testpaths), so
    # ``pytest --unitablate-spec specs/x.yaml`` runs that spec and nothing else; otherwise
    # they are added. xdist workers re-parse the same invocation and re-run this hook, so
    # every worker collects exactly what the controller would.
    spec_args = [str(p) for p in resolved]
    if cli_specs and config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = spec_args
    else:
        existing = {str(Path(root, a).resolve()) for a in config.args if "::" not in a}
        config.args = [*config.args, *(a for a in spec_args if a not in existing)]


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
    return f"unitablate: {names} (device {state.device}, seed {state.seed}{extra})"


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
                self.state.records.append(record)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    if state is None or state.is_worker:
        return  # files are written by the controller only
    if state.specs or state.collected_specs or state.records:
        _write_outputs(session, state)


def _environment(state: PluginState) -> dict[str, Any]:
    from pytest_unitablate import __version__

    torch_version = None
    if "torch" in sys.modules:
        torch_version = str(sys.modules["torch"].__version__)
    dtype = state._runtime.dtype if state._runtime is not None else None
    recs = [r for r in state.records if r.get("torch_version")]
    if recs:
        torch_version = recs[0]["torch_version"]
    return {"pytest_unitablate_version": __version__, "torch_version": torch_version,
            "device": state.device, "dtype": dtype or _first(state.records, "dtype")}


def _first(records: list[dict[str, Any]], name: str) -> Any:
    return next((r[name] for r in records if r.get(name) is not None), None)


def _write_outputs(session: pytest.Session, state: PluginState) -> None:
    from pytest_unitablate.plugin.report import build_report, write_json

    if state.report_path is not None:
        path = state.report_path
        if not path.is_absolute():
            path = Path(session.config.invocation_params.dir) / path
        write_json(path, build_report(state.records, _environment(state)))
    html_path = session.config.getoption("unitablate_html")
    if html_path:
        from pytest_unitablate.analysis.html_report import write_html_report
        from pytest_unitablate.plugin.report import sort_records

        write_html_report(Path(session.config.invocation_params.dir) / html_path,
                          checks=sort_records(state.records))
    if state.record_mode != "none":
        from pytest_unitablate.plugin.record_mode import apply_recorded

        state.recorded = apply_recorded(state.records, state.record_mode,
                                        state.record_level, _environment(state))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is None or state.is_worker or not state.records:
        return
    from pytest_unitablate.plugin.report import format_table, sort_records

    terminalreporter.write_sep("=", "unitablate summary")
    terminalreporter.write_line(format_table(sort_records(state.records)))
    if state.report_path is not None:
        terminalreporter.write_line(f"unitablate: JSON report written to {state.report_path}")
    recorded = getattr(state, "recorded", None)
    if recorded is not None:
        for line in recorded:
            terminalreporter.write_line(f"unitablate: {line}")
