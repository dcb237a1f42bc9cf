"""Command-line options and ini keys, and reading them into the run's settings (torch-free).

Every option is ``--unitablate-*`` in one option group; every one a CI sets in a config file
has an ini twin of its real type (``unitablate_seed`` is an int, ``unitablate_full_trace``
a bool). The command line beats the ini file, which beats the default. Bad values are
``pytest.UsageError`` (exit code 4).

``--unitablate-record-force`` has no ini twin on purpose: it disarms the refusal to rewrite
thresholds on CI, which must be a deliberate choice on one command line, never a standing
setting of every run.

Example (``pyproject.toml``)::

    [tool.pytest.ini_options]
    unitablate_spec = ["specs/resnet.yaml"]
    unitablate_seed = 0
    unitablate_summary = "table"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_unitablate.plugin.record_mode import RECORD_MODES

SUMMARY_MODES = ("auto", "none", "line", "table")
# ini types "int" and "float" exist from pytest 8.4; older versions read strings, which
# _typed() converts, so the value is checked the same way everywhere.
_TYPED_INI = pytest.version_tuple >= (8, 4)


def add_options(parser: pytest.Parser) -> None:
    """Register the options and ini keys (``pytest_addoption``)."""
    group = parser.getgroup("unitablate", "unit ablation regression tests (pytest-unitablate)")

    def option(name: str, ini_help: str | None, ini_type: str = "string", **kwargs: Any
               ) -> None:
        dest = "unitablate_" + name.replace("-", "_")
        group.addoption(f"--unitablate-{name}", dest=dest, **kwargs)
        if ini_help is not None:
            typed = ini_type if ini_type in ("string", "bool", "paths") or _TYPED_INI \
                else "string"
            parser.addini(dest, type=typed, default=_INI_DEFAULTS[ini_type],  # type: ignore[arg-type]
                          help=ini_help)

    option("spec", "spec files collected in every run (pytest-unitablate)", "paths",
           action="append", default=[], metavar="PATH",
           help="collect this spec file (repeatable). ini: unitablate_spec. "
           "Default: none (the plugin stays inactive)")
    option("device", "device of the evaluation inputs (default: cpu)", default=None,
           metavar="DEVICE", help="device the evaluation inputs go to; the model must already "
           "be there. ini: unitablate_device. Default: cpu")
    option("seed", "torch.manual_seed before every evaluation (int; default: 0)", "int",
           default=None, type=int, metavar="N",
           help="torch.manual_seed before every evaluation. ini: unitablate_seed. Default: 0")
    option("report", "path of the JSON report (default: none)", default=None,
           metavar="PATH.json", help="write one JSON record per spec item. "
           "ini: unitablate_report. Default: no report")
    option("html", "path of the HTML page (default: none)", default=None,
           metavar="PATH.html", help="write a self-contained HTML page of the items' "
           "outcomes. ini: unitablate_html. Default: none")
    option("summary", "terminal summary: auto, none, line or table (default: auto)",
           default=None, choices=SUMMARY_MODES,
           help="the terminal summary: none; line (one line: checks, failures, report); "
           "table (one row per item); auto = table with -v, nothing with -qq, else line. "
           "ini: unitablate_summary. Default: auto")
    option("record-mode", "record mode: none, new, failed, all or calibrate (default: none)",
           default=None, choices=RECORD_MODES,
           help="write measured thresholds back into the spec: none (never write), new "
           "(fill null thresholds), failed (rewrite failing ones; they still fail), all "
           "(rewrite all; they pass), calibrate (add this model to <spec>.calibration.json "
           "and write every threshold from all reference models recorded, 3 or more). "
           "ini: unitablate_record_mode. Default: none")
    option("record-force", None, action="store_true", default=False,
           help="allow record mode when a CI environment variable is set (no ini key)")
    option("record-confidence", "confidence level of recorded bounds (float; default 0.95)",
           "float", default=None, type=float, metavar="LEVEL",
           help="confidence level of the interval whose bound record mode writes and "
           "failures show. ini: unitablate_record_confidence. Default: 0.95")
    option("record-floor", "smallest min_* threshold record mode writes, in pp or % "
           "(float; default 0)", "float", default=None, type=float, metavar="PP",
           help="record mode never writes a min_* threshold at or below 0 (it could not "
           "fail); raise that floor, in percentage points (a relative threshold: percent). "
           "ini: unitablate_record_floor. Default: 0")
    option("record-min-share", "share of the measured effect a recorded min_* bound must "
           "keep (float; default 0.5)", "float", default=None, type=float, metavar="SHARE",
           help="record mode (and discover) never write a min_* bound that keeps less than "
           "this share of the measured effect, or that one example could meet: too few "
           "examples for the effect. 0 turns it off. ini: unitablate_record_min_share. "
           "Default: 0.5")
    option("cache", "on-disk evaluation cache: on or off (default: on)", default=None,
           choices=("on", "off"),
           help="reuse baselines, ablations and sweeps across xdist workers and runs, from "
           "pytest's cache directory (keyed by weights, data, ablation, versions; "
           "--cache-clear empties it). ini: unitablate_cache. Default: on")
    option("full-sweeps", "layer-wide checks always evaluate every unit (bool; default: "
           "false)", "bool", action="store_const", const=True, default=None,
           help="evaluate every unit of a layer-wide check, even when the first units "
           "already decide it (the deciding unit is then the best or worst of all). "
           "ini: unitablate_full_sweeps. Default: stop as soon as the outcome is decided")
    option("plain-passes", "named checks get their own full forward passes (bool; "
           "default: false)", "bool", action="store_const", const=True, default=None,
           help="evaluate each named check with its own full forward passes instead of "
           "grouping a layer's named checks into one scan (same outcomes, slower; for "
           "comparison and debugging). ini: unitablate_plain_passes. Default: grouped")
    option("memory-budget", "bytes a layer sweep's stacked passes may hold at once, e.g. "
           "512MiB or 4GiB (default: 2GiB)", default=None, metavar="SIZE",
           help="memory the scan engine may use beyond one plain batch: it measures one "
           "unit on one example and stacks as many as fit (B, KiB, MiB, GiB; plain numbers "
           "are bytes). ini: unitablate_memory_budget. Default: 2GiB")
    option("progress", "progress lines for long sweeps: auto, on or off (default: auto)",
           default=None, choices=("auto", "on", "off"),
           help="show how far a long layer sweep is: serial runs, on a terminal or in a "
           "piped CI log, a line after 2 s, then at least every 10 s, and one at 100%% "
           "(on = auto). ini: unitablate_progress. Default: auto")
    option("full-trace", "show internal tracebacks (bool; default: false)", "bool",
           action="store_const", const=True, default=None,
           help="show internal tracebacks instead of the short failure text. "
           "ini: unitablate_full_trace. Default: off")
    group.addoption("--unitablate-weights-env", dest="unitablate_weights_env",
                    action="append", default=[], metavar="VAR",
                    help="an environment variable that chooses the weights under test "
                    "(repeatable; added to ini unitablate_weights_env): failures' re-record "
                    "command, the report and the page name its value. Default: "
                    "MODEL_WEIGHTS")
    parser.addini("unitablate_weights_env", type="linelist", default=list(WEIGHTS_ENV),
                  help="environment variables that choose the weights under test (default: "
                  "MODEL_WEIGHTS); a plugin or conftest may add its own with "
                  "config.addinivalue_line")


#: The environment variable the docs' fixtures read the weights' path from.
WEIGHTS_ENV = ("MODEL_WEIGHTS",)

_INI_DEFAULTS: dict[str, Any] = {"string": "", "paths": [], "int": "", "float": "",
                                 "bool": False}


def _value(config: pytest.Config, dest: str) -> Any:
    """CLI beats ini beats default (``None`` when neither is set)."""
    value = config.getoption(dest)
    if value is not None and value != []:
        return value
    try:
        ini = config.getini(dest)
    except (ValueError, TypeError, pytest.UsageError) as exc:  # a typed ini value
        raise pytest.UsageError(f"ini {dest}: {exc}") from None
    return None if ini in ("", None, []) else ini


def _typed(config: pytest.Config, dest: str, kind: type, default: Any) -> Any:
    value = _value(config, dest)
    if value is None:
        return default
    if kind is bool and isinstance(value, bool):
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        name = dest.replace("_", "-")
        raise pytest.UsageError(
            f"--{name} / ini {dest} must be {'an' if kind is int else 'a'} "
            f"{kind.__name__}, got {value!r}") from None


@dataclass(frozen=True)
class Settings:
    """The run's settings, read once in ``pytest_configure``."""

    specs: tuple[Path, ...]
    specs_from_cli: bool
    device: str
    seed: int
    report: Path | None
    html: Path | None
    summary: str
    record_mode: str
    record_force: bool
    record_level: float
    record_floor: float  # a fraction: 0.05 for 5 pp
    full_trace: bool
    record_min_share: float = 0.5
    cache: bool = True
    full_sweeps: bool = False
    memory_budget: int = 2 * 1024**3
    progress: str = "auto"
    plain_passes: bool = False


def read_settings(config: pytest.Config) -> Settings:
    """Read and check every option; bad values are ``pytest.UsageError``."""
    cli_specs = [Path(p) for p in config.getoption("unitablate_spec") or []]
    ini_specs = [Path(p) for p in config.getini("unitablate_spec") or []]
    device = str(_value(config, "unitablate_device") or "cpu")
    from pytest_unitablate.engine.settings import device_problem

    problem = device_problem(device)
    if problem is not None:
        raise pytest.UsageError(f"--unitablate-device {problem}")
    summary = str(_value(config, "unitablate_summary") or "auto")
    if summary not in SUMMARY_MODES:
        raise pytest.UsageError(
            f"unitablate_summary must be one of {', '.join(SUMMARY_MODES)}, got {summary!r}")
    mode = str(_value(config, "unitablate_record_mode") or "none")
    if mode not in RECORD_MODES:
        raise pytest.UsageError(
            f"unitablate_record_mode must be one of {', '.join(RECORD_MODES)}, got {mode!r}")
    level = _typed(config, "unitablate_record_confidence", float, 0.95)
    if not 0.5 <= level < 1.0:
        raise pytest.UsageError(
            f"--unitablate-record-confidence must be in [0.5, 1), got {level}")
    cache = str(_value(config, "unitablate_cache") or "on")
    if cache not in ("on", "off"):
        raise pytest.UsageError(f"unitablate_cache must be on or off, got {cache!r}")
    budget = parse_size(str(_value(config, "unitablate_memory_budget") or "2GiB"))
    progress = str(_value(config, "unitablate_progress") or "auto")
    if progress not in ("auto", "on", "off"):
        raise pytest.UsageError(f"unitablate_progress must be auto, on or off, got {progress!r}")
    report = _value(config, "unitablate_report")
    html = _value(config, "unitablate_html")
    return Settings(
        specs=tuple(cli_specs or ini_specs), specs_from_cli=bool(cli_specs), device=device,
        seed=_typed(config, "unitablate_seed", int, 0),
        report=Path(report) if report else None, html=Path(html) if html else None,
        summary=summary, record_mode=mode,
        record_force=bool(config.getoption("unitablate_record_force")),
        record_level=float(level),
        record_floor=_floor(_typed(config, "unitablate_record_floor", float, 0.0)),
        record_min_share=_share(_typed(config, "unitablate_record_min_share", float, 0.5)),
        full_trace=bool(_typed(config, "unitablate_full_trace", bool, False)),
        cache=cache == "on",
        full_sweeps=bool(_typed(config, "unitablate_full_sweeps", bool, False)),
        memory_budget=budget, progress=progress,
        plain_passes=bool(_typed(config, "unitablate_plain_passes", bool, False)),
    )


def parse_size(text: str) -> int:
    """Bytes from ``"512MiB"``, ``"4 GiB"`` or a plain number; a usage error otherwise.

    >>> parse_size("512MiB")
    536870912
    """
    from pytest_unitablate.engine.settings import parse_size as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise pytest.UsageError(
            f"--unitablate-memory-budget / ini unitablate_memory_budget {exc}") from None


def _floor(pp: float) -> float:
    if not 0.0 <= pp < 100.0:
        raise pytest.UsageError(f"--unitablate-record-floor must be in [0, 100) pp, got {pp}")
    return pp / 100.0


def _share(share: float) -> float:
    if not 0.0 <= share < 1.0:
        raise pytest.UsageError(f"--unitablate-record-min-share must be in [0, 1), got {share}")
    return share


def weights_env(config: pytest.Config) -> tuple[str, ...]:
    """The environment variables that choose the weights under test: the ini key
    ``unitablate_weights_env`` (a conftest or plugin may add its own at configure time)
    and ``--unitablate-weights-env``, in order, without repeats. Read when needed, not at
    configure: a conftest's ``pytest_configure`` may run after the plugin's."""
    names = [*(config.getini("unitablate_weights_env") or []),
             *(config.getoption("unitablate_weights_env") or [])]
    return tuple(dict.fromkeys(str(n).strip() for n in names if str(n).strip()))


__all__ = ["SUMMARY_MODES", "WEIGHTS_ENV", "Settings", "add_options", "parse_size",
           "read_settings", "weights_env"]
