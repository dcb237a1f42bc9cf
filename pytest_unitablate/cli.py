"""The command line: ``python -m pytest_unitablate COMMAND`` (or the ``unitablate`` script).

* ``check SPEC``: evaluate a spec without pytest (the same engine, the same failure text)
  and exit as pytest would for it: 0 every item passed, 1 an item failed or errored, 2 the
  spec has problems, 4 a usage error (a missing file, a bad option);
* ``discover``: scan layers of a model and write a starter spec that passes;
* ``compare REFERENCE.json CANDIDATE.json``: what changed between two runs (outcome flips,
  drops outside their intervals, units whose identity moved); exit 1 when anything did;
* ``signatures FILE``: print a signatures sidecar as a table.

Model and data names in a spec (pytest fixture names) are given with ``--fixture
NAME=package.module:callable``; references written as import paths need nothing.

Example::

    python -m pytest_unitablate check specs/resnet.yaml \\
        --fixture digits_resnet=unitablate_demo.fixtures:resnet \\
        --fixture digits_test=unitablate_demo.fixtures:test_data --report out.json
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

#: pytest's exit code for a usage error (and ours)
USAGE = 4

#: What ``discover`` of one model says after writing the spec.
ONE_MODEL_NOTE = ("note: thresholds measured on one model guard fine-tunes, pruning and "
                  "quantisation of it; for retrains, calibrate them over 3 or more reference "
                  "models (--unitablate-record-mode=calibrate, docs/calibration.md)")

#: What each exit code means, for a pytest run of a spec and for ``check`` alike (the docs'
#: reference is generated from this).
EXIT_CODES: dict[int, str] = {
    0: "every expectation met",
    1: "an expectation missed (a threshold, a class the model forgot, a protected unit "
       "gone), the model under test is broken (NaN logits, its fixture or factory raised), "
       "an unguardable calibration, or a test that is not a spec item failed",
    2: "the spec is wrong: it does not load (YAML syntax, unknown key, bare number, unknown "
       "class: a collection error listing every problem), or it does not fit the model and "
       "data and nothing else failed (unknown layer, unit out of range, a missing fixture, "
       "a loader that shuffles, inputs of the wrong dtype, a class with too few examples, a "
       "layer that never runs or runs twice): each as `path:line: message`, no traceback; "
       "the JSON report marks these items `problem: spec`",
    USAGE: "a usage error: a spec path that does not exist or holds no spec, a bad option or "
           "device, record mode in CI without `--unitablate-record-force`, torch not "
           "installed",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 4 as pytest's does (argparse would exit 2, which
    pytest and ``check`` keep for a spec with problems)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def _level(text: str) -> float:
    """A confidence level written as in a spec (``95%``) or as a fraction (``0.95``).

    >>> _level("95%"), _level("0.9")
    (0.95, 0.9)
    """
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a level between 0% and 100%")
    return round(value, 10)


def _parser() -> argparse.ArgumentParser:
    from pytest_unitablate.version import __version__

    parser = _Parser(prog="python -m pytest_unitablate")
    parser.add_argument("--version", action="version", version=f"pytest-unitablate "
                        f"{__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    c = sub.add_parser("check", help="evaluate a spec without pytest; exit 0/1/2/4 as "
                       "pytest would")
    c.add_argument("spec", type=Path, nargs="+", help="spec files, or folders of them")
    c.add_argument("--fixture", action="append", default=[], metavar="NAME=MODULE:CALLABLE",
                   help="the object a name in the spec stands for: the callable is called "
                   "once (repeatable)")
    c.add_argument("--report", type=Path, default=None, metavar="PATH.json",
                   help="write the JSON report (the same as --unitablate-report)")
    c.add_argument("--html", type=Path, default=None, metavar="PATH.html",
                   help="write the review page (the same as --unitablate-html)")
    c.add_argument("--device", default="cpu", help="device of the evaluation inputs; the "
                   "model must already be there (default: cpu)")
    c.add_argument("--seed", type=int, default=0, help="torch.manual_seed before every "
                   "pass (default: 0)")
    c.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                   help="keep results on disk there, keyed by weights, data and versions "
                   "(default: nothing kept)")
    c.add_argument("--memory-budget", default=None, metavar="SIZE",
                   help="memory a layer sweep's stacked passes may hold, e.g. 512MiB "
                   "(default: 2GiB)")
    c.add_argument("--full-sweeps", action="store_true",
                   help="layer-wide checks evaluate every unit (no early stop)")
    c.add_argument("--full-trace", action="store_true",
                   help="let an unexpected error through with its traceback instead of "
                   "recording it as the item's failure")
    c.add_argument("--record-mode", default="none",
                   choices=("none", "new", "failed", "all", "calibrate"),
                   help="write thresholds into the spec as --unitablate-record-mode does; "
                   "calibrate adds this model to <spec>.calibration.json (default: none)")
    c.add_argument("--record-force", action="store_true",
                   help="allow record mode when a CI environment variable is set")
    c.add_argument("-v", "--verbose", action="store_true",
                   help="print the table of every item")
    d = sub.add_parser("discover", help="scan layers and write a starter spec with recorded "
                       "thresholds")
    d.add_argument("--model", required=True, action="append",
                   help="package.module:callable returning the model, or the name of a "
                   "fixture in your conftest.py (found through pytest, as the spec's); "
                   "repeat it for several "
                   "reference models (honest retrains, 3 or more): the starter spec is then "
                   "calibrated over all of them and written with <out>.calibration.json")
    d.add_argument("--weights", action="append", default=[], metavar="PATH",
                   help="with --model naming a conftest fixture: a reference model's weights "
                   "file, repeated for each (3 or more); the fixture reads it from "
                   "--weights-var, as pytest runs it once per file (calibrate)")
    d.add_argument("--weights-var", default="MODEL_WEIGHTS", metavar="NAME",
                   help="the environment variable the model fixture reads its weights from "
                   "(default MODEL_WEIGHTS)")
    d.add_argument("--spec-model", default=None, metavar="REF",
                   help="with several --model: what the spec's model: says (a fixture name "
                   "or import path; default: the first --model)")
    d.add_argument("--data", required=True, action="append", metavar="REF",
                   help="package.module:callable returning the data, or a conftest fixture "
                   "name; repeat as NAME=REF for "
                   "named data groups (prompt sets), which become the targets")
    d.add_argument("--position", default=None, metavar="POS",
                   help="a language model: judge the next token at POS, 'last' (each "
                   "prompt's last real token) or an index (-1); written as position:")
    d.add_argument("--layer", action="append", required=True, help="layer to scan (repeatable)")
    d.add_argument("--classes", default=None, help="comma-separated class names")
    d.add_argument("--top", type=int, default=5, help="named-unit checks to write (default 5)")
    d.add_argument("--confidence", type=_level, default=0.95, metavar="LEVEL",
                   help="level of the paired intervals whose bounds become thresholds, as in "
                   "a spec: 95%% (or 0.95; default 95%%)")
    d.add_argument("--min-share", type=float, default=0.5, metavar="SHARE",
                   help="leave out a lower bound that keeps less than this share of its "
                   "measured drop, or that one example meets (default 0.5; 0: keep all)")
    d.add_argument("--out", type=Path, required=True, help="spec file to write")
    d.add_argument("--force", action="store_true", help="replace an existing file")
    d.add_argument("--identity", action="store_true", help="protect the named units by "
                   "their signatures (identity: signature; writes <out>.signatures.json)")
    d.add_argument("--unit", choices=("channel", "head"), default="channel",
                   help="what a unit is: a channel (default) or an attention head")
    d.add_argument("--channel-dim", type=int, default=None, metavar="DIM",
                   help="the dimension of the layers' outputs that holds the units; needed "
                   "for any output the model's modules do not show to be N,C or "
                   "channels-first N,C,H,W (-1 for N,T,C tokens and channels-last N,H,W,C; "
                   "docs/libraries.md)")
    d.add_argument("--num-heads", type=int, default=None, metavar="N",
                   help="with --unit head: the heads of each layer, where the module does "
                   "not say")
    m = sub.add_parser("compare", help="what changed between two JSON reports: outcome "
                       "flips first, then baselines and drops outside their intervals, units "
                       "whose identity moved; "
                       "exit 1 when anything changed")
    m.add_argument("reference", type=Path, help="the reference run's JSON report")
    m.add_argument("candidate", type=Path, help="the candidate run's JSON report")
    m.add_argument("--html", type=Path, default=None, metavar="PATH.html",
                   help="also write the comparison as a self-contained page")
    m.add_argument("--all", action="store_true", dest="show_all",
                   help="also list baseline moves that chance explains (inside the 95%% "
                   "interval)")
    s = sub.add_parser("signatures", help="print a signatures sidecar as a table")
    s.add_argument("file", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        return check(args)
    if args.command == "signatures":
        return signatures(args.file)
    if args.command == "compare":
        return compare(args)
    return discover(args)


def compare(args: argparse.Namespace) -> int:
    """``compare``: the changes from one JSON report to another (exit 0 none, 1 some,
    4 a file that is not a report)."""
    import json

    from pytest_unitablate.verdicts.compare import (
        compare_reports,
        comparison_page,
        comparison_text,
        report_problem,
    )

    docs = []
    for path in (args.reference, args.candidate):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            print(f"ERROR: {path}: not a readable JSON report ({exc})", file=sys.stderr)
            return USAGE
        problem = report_problem(doc)
        if problem is not None:
            print(f"ERROR: {path}: {problem}", file=sys.stderr)
            return USAGE
        docs.append(doc)
    changes = compare_reports(docs[0], docs[1], show_all=args.show_all)
    hidden = 0 if args.show_all else len(compare_reports(docs[0], docs[1], show_all=True)
                                          ) - len(changes)
    print(comparison_text(changes, str(args.reference), str(args.candidate), hidden))
    if args.html is not None:
        from pytest_unitablate.atomic import atomic_write

        args.html.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.html, comparison_page(changes, str(args.reference),
                                                str(args.candidate), docs[0], docs[1], hidden))
    return 1 if changes else 0


def check(args: argparse.Namespace) -> int:
    """``check``: each spec through the engine; prints failures and the summary line."""
    from pytest_unitablate.engine.settings import parse_size

    specs, usage = _spec_files(args.spec)
    usage = usage or _device_problem(args.device)
    budget = None
    if usage is None and args.memory_budget is not None:
        try:
            budget = parse_size(args.memory_budget)
        except ValueError as exc:
            usage = f"--memory-budget {exc}"
    fixtures: dict[str, str] = {}
    for given in args.fixture:
        name, sep, ref = given.partition("=")
        if usage is None and (not sep or not name or ":" not in ref):
            usage = f"--fixture {given!r}: write NAME=package.module:callable"
        fixtures[name] = ref
    if usage is None:
        from pytest_unitablate.errors import torch_missing

        usage = torch_missing("check")
    if usage is None:
        from pytest_unitablate.verdicts.recording import record_problem

        problem = record_problem(args.record_mode, args.record_force)
        usage = f"--record-mode {args.record_mode}: {problem}" if problem else None
    if usage is None:
        from pytest_unitablate.engine.run import cuda_problem

        problem = cuda_problem(args.device)
        usage = f"--device {problem}" if problem else None
    if usage is not None:
        print(f"ERROR: {usage}", file=sys.stderr)
        return USAGE
    # import paths resolve from the current directory, as with python -m (the installed
    # script's own folder is first on sys.path otherwise)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return _check(args, specs, fixtures, budget)


def _check(args: argparse.Namespace, specs: list[Path], fixtures: dict[str, str],
           budget: int | None) -> int:
    from pytest_unitablate.engine.engine import Engine
    from pytest_unitablate.engine.refs import import_lookup
    from pytest_unitablate.engine.run import FAILING, evaluate_spec
    from pytest_unitablate.engine.settings import EngineSettings
    from pytest_unitablate.engine.store import DiskStore, NullStore, Store
    from pytest_unitablate.errors import SpecError
    from pytest_unitablate.verdicts.records import (
        SPEC_PROBLEMS_LINE,
        build_report,
        build_run,
        engine_lines,
        run_path,
        sort_records,
        spec_problems_only,
        summary_line,
        write_json,
    )

    settings = EngineSettings(device=args.device, seed=args.seed, memory_budget=budget,
                              full_sweeps=args.full_sweeps, full_sweeps_option="--full-sweeps",
                              device_option="--device", run_facts=args.html is not None,
                              full_trace=args.full_trace, full_trace_option="--full-trace",
                              record_mode=args.record_mode)
    store: Store = DiskStore(args.cache_dir) if args.cache_dir is not None else NullStore()
    engine = Engine(settings, store)
    given = ", ".join(sorted(fixtures)) or "none"
    hint = (f"it is not one of the names given with --fixture ({given}) and not an import "
            f"path 'package.module:callable'")
    runs, problems = [], 0
    for spec in specs:
        try:
            runs.append(evaluate_spec(spec, import_lookup(fixtures, hint), engine))
        except SpecError as exc:
            print(f"{len(exc.problems)} problem(s) in spec {spec}:\n{exc}", file=sys.stderr)
            problems += 1
    if problems:
        return 2
    recorded = [line for run in runs for line in run.record(
        args.record_mode, settings.record_level)] if args.record_mode != "none" else []
    records = [{**i.record, "outcome": i.outcome} for run in runs for i in run.items]
    if args.report is not None:
        write_json(args.report, build_report(records, runs[0].environment))
        write_json(run_path(args.report), build_run(records))
    if args.html is not None:
        from pytest_unitablate.analysis.review_figures import review_figures
        from pytest_unitablate.verdicts.records import sort_records
        from pytest_unitablate.verdicts.review_page import write_review_page

        write_review_page(args.html, records, runs[0].environment,
                          figures=review_figures(sort_records(records)))
    for run in runs:
        for item in run.items:
            for text in item.warnings:
                print(f"WARNING {run.spec.path}::{item.id}: {text}")
        body = run.text(table=args.verbose).splitlines()[:-1]  # the summary comes last
        if body:
            print("\n".join(body))
    if args.verbose:
        for line in engine_lines(sort_records(records)):
            print(f"scan engine: {line}")
        if store.enabled:
            print(store.summary())
    for line in recorded:
        print(f"unitablate: {line}")
    print(summary_line(sort_records(records), args.report))
    unguardable = any(r.get("unguardable") for r in records)
    if spec_problems_only(records):
        print(SPEC_PROBLEMS_LINE)
        return 2
    return 1 if unguardable or any(r["outcome"] in FAILING for r in records) else 0


def _spec_files(paths: list[Path]) -> tuple[list[Path], str | None]:
    """The spec files ``paths`` name (a folder: the spec files below it, sorted), or what
    is wrong (exit 4, as pytest gives for ``--unitablate-spec`` of a missing, empty or
    non-spec file)."""
    from pytest_unitablate.spec.loader import is_spec_file

    found: list[Path] = []
    for spec in paths:
        if spec.is_dir():
            inside = sorted(p for p in spec.rglob("*.y*ml") if is_spec_file(p))
            if not inside:
                return [], f"{spec}: no spec file in this folder"
            found.extend(inside)
        elif not spec.is_file():
            return [], f"{spec}: no such file or folder"
        elif not spec.read_text(errors="replace").strip():
            return [], (f"{spec}: the file is empty (a spec starts with 'unitablate: 1', "
                        f"then model, data, checks)")
        elif not is_spec_file(spec):
            return [], (f"{spec}: not a spec (a spec file needs a top-level 'unitablate: 1' "
                        f"key and a .yaml/.yml name)")
        else:
            found.append(spec)
    return found, None


def _device_problem(device: str) -> str | None:
    from pytest_unitablate.engine.settings import device_problem

    problem = device_problem(device)
    return f"--device {problem}" if problem else None


def signatures(file: Path) -> int:
    """``signatures``: a sidecar as a table."""
    from pytest_unitablate.spec.signatures import SignatureFileError, Signatures, format_table

    try:
        print(format_table(Signatures.from_text(file.read_text(), str(file))))
    except (OSError, SignatureFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _int_or(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text  # refused by the position check with its message


def _for_discover(text: str) -> str:
    """A core message as discover's options say it (``--channel-dim -1``, not a spec key).

    >>> _for_discover("say 'channel_dim: -1' for tokens; on the check, or for the whole spec")
    'say --channel-dim -1 for tokens'
    """
    text = re.sub(r"[,;] on the check, or for the whole spec", "", text)
    text = re.sub(r"'unit: head'", "--unit head", text)
    return re.sub(r"'channel_dim: (-?\d+)'", r"--channel-dim \1", text)


def discover(args: argparse.Namespace) -> int:
    """``discover``: a starter spec from scans of the given layers."""
    from pytest_unitablate.analysis.discover import discover as write_spec
    from pytest_unitablate.analysis.discover import is_fixture_name
    from pytest_unitablate.errors import UnitAblateError

    classes = args.classes.split(",") if args.classes else None
    position = None if args.position is None else (
        args.position if args.position == "last" else _int_or(args.position))
    named = [d for d in args.data if "=" in d]
    if (named and len(named) != len(args.data)) or (len(args.data) > 1 and not named):
        print("error: --data: give one REF, or several NAME=REF (data groups)",
              file=sys.stderr)
        return 2
    data: Any = dict(d.split("=", 1) for d in named) if named else args.data[0]
    if args.weights or len(args.model) > 1:
        if named or position is not None:
            print("error: data groups and --position are not calibrated by discover yet: "
                  "discover one model, then calibrate the spec with "
                  "--unitablate-record-mode=calibrate", file=sys.stderr)
            return 2
        args.data = data
        return _discover_calibrated(args, classes)
    refs = [args.model[0], *(data.values() if isinstance(data, dict) else [data])]
    if any(is_fixture_name(r) for r in refs):  # conftest fixture names: pytest resolves them
        return _discover_with_conftest(args, data, classes, position)
    try:
        text = write_spec(args.model[0], data, args.layer, args.out, classes=classes,
                          top=args.top, level=args.confidence, overwrite=args.force,
                          identity=args.identity, unit=args.unit,
                          channel_dim=args.channel_dim, num_heads=args.num_heads,
                          min_share=args.min_share, position=position)
    except (UnitAblateError, FileExistsError, ValueError, ImportError, AttributeError,
            TypeError, LookupError) as exc:
        print(f"error: {_for_discover(str(exc))}", file=sys.stderr)
        return 2
    checks = text.count("  - layer:")  # (checks, not items: each check holds several)
    print(f"wrote {args.out} with {checks} checks; run: pytest --unitablate-spec {args.out}")
    print(ONE_MODEL_NOTE)
    if "units: [" not in text:
        print(f"note: no named-unit checks: no unit's class drop has a "
              f"{args.confidence * 100:g}% lower bound of at least 5 pp on this data, nor a "
              f"log-prob drop a lower bound of 0.05 nats that keeps the share (a redundant "
              f"layer, or too few examples per class to bound a drop away from 0)")
    return 0


def _discover_with_conftest(args: argparse.Namespace, data: Any,
                            classes: list[str] | None, position: Any) -> int:
    """``discover`` of one model whose model or data are conftest fixture names: run in a
    pytest subprocess (:mod:`pytest_unitablate.plugin.conftest_fixtures`), so this command
    needs no pytest itself and the fixtures load as the spec's will."""
    import json
    import subprocess

    if args.out.exists() and not args.force:  # before any fixture loads
        print(f"error: {args.out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    kwargs = {"model_ref": args.model[0], "data_ref": data, "layers": list(args.layer),
              "out": str(args.out), "classes": classes, "top": args.top,
              "level": args.confidence, "overwrite": args.force, "identity": args.identity,
              "unit": args.unit, "channel_dim": args.channel_dim,
              "num_heads": args.num_heads, "min_share": args.min_share,
              "position": position}
    proc = subprocess.run([sys.executable, "-m", "pytest_unitablate.plugin.conftest_fixtures",
                           json.dumps(kwargs)], check=False)
    if proc.returncode != 0:
        return 2
    text = args.out.read_text(encoding="utf-8")
    checks = text.count("  - layer:")
    print(f"wrote {args.out} with {checks} checks; run: pytest --unitablate-spec {args.out}")
    print(ONE_MODEL_NOTE)
    return 0


def _discover_calibrated(args: argparse.Namespace, classes: list[str] | None) -> int:
    """``discover`` with several ``--model``: a starter spec calibrated over them."""
    from pytest_unitablate.analysis.discover import is_fixture_name, load_reference
    from pytest_unitablate.engine.starter import discover_calibrated, discover_with_fixtures
    from pytest_unitablate.errors import UnitAblateError
    from pytest_unitablate.verdicts.calibration import calibration_path

    count = len(args.weights) or len(args.model)
    try:
        if args.weights:
            if len(args.model) != 1 or not is_fixture_name(args.model[0]) or not classes:
                raise ValueError("--weights needs one --model naming your conftest's model "
                                 "fixture (not an import path) and --classes")
            text = discover_with_fixtures(
                args.model[0], args.data, args.weights, args.layer, args.out,
                classes=classes, weights_var=args.weights_var, overwrite=args.force,
                unit=args.unit, channel_dim=args.channel_dim, num_heads=args.num_heads)
        else:
            models = [load_reference(ref) for ref in args.model]
            text = discover_calibrated(
                models, load_reference(args.data), args.layer, args.out,
                model_ref=args.spec_model or args.model[0], data_ref=args.data,
                classes=classes, overwrite=args.force, unit=args.unit,
                channel_dim=args.channel_dim, num_heads=args.num_heads)
    except (UnitAblateError, FileExistsError, ValueError, ImportError, AttributeError,
            TypeError) as exc:
        print(f"error: {_for_discover(str(exc))}", file=sys.stderr)
        return 2
    kept = sum(1 for line in text.splitlines() if line.startswith("  - layer:"))
    left = text.count("unguardable:")
    print(f"wrote {args.out} with {kept} checks calibrated over {count} models "
          f"and {calibration_path(args.out)}; {left} target(s) have unguardable constraints "
          f"(see the comments); run: pytest --unitablate-spec {args.out}")
    return 0


__all__ = ["main"]
