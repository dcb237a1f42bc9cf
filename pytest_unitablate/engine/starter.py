"""A starter spec calibrated over several reference models (``discover`` with several
``--model``).

One model shows which of its units carry which class; only several honest retrains show
which of those findings hold for *the recipe*: with other seeds a class's strongest unit
moves to another index and its effect varies by factors (docs/calibration.md). So the
starter spec of several models names no unit: per scanned layer it has

* an ``any_unit`` check with every class as a target, ``min_drop`` and
  ``min_logprob_drop`` ("some unit of this layer carries the class");
* an ``every_unit`` guard on ``overall``, ``max_drop`` and ``max_logprob_drop`` (the paper's
  first finding: no single unit costs much overall);
* on the first layer's check, ``min_accuracy`` per class (a class the candidate forgot).

Each constraint is calibrated exactly as ``--unitablate-record-mode=calibrate`` would do
it, model after model (the same engine, the same calibration file beside the spec); the
constraints calibration finds unguardable are left out, and a comment beside each target
says which and why (the range over the models).

Example::

    from pytest_unitablate.engine.starter import discover_calibrated
    text = discover_calibrated([model_a, model_b, model_c], data, ["layer3.0"],
                               Path("specs/starter.yaml"), model_ref="my_model",
                               data_ref="my_test_data")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pytest_unitablate.atomic import atomic_write
from pytest_unitablate.core.tokens import call_model
from pytest_unitablate.engine.engine import Engine
from pytest_unitablate.engine.refs import mapping_lookup
from pytest_unitablate.engine.run import evaluate_spec
from pytest_unitablate.engine.settings import EngineSettings
from pytest_unitablate.spec.ids import item_ids
from pytest_unitablate.spec.keys import UNIT_KINDS
from pytest_unitablate.spec.loader import load_spec
from pytest_unitablate.spec.model import OVERALL
from pytest_unitablate.spec.rewrite import format_threshold
from pytest_unitablate.verdicts.calibration import (
    MIN_MODELS,
    CalibrationFile,
    calibrated_threshold,
    calibration_path,
    definition_of,
)
from pytest_unitablate.verdicts.failure import LOCATION
from pytest_unitablate.verdicts.records import static_record

#: The names the skeleton spec uses while each model is measured.
_MODEL, _DATA = "unitablate_discover_model", "unitablate_discover_data"
_CLASS_KINDS = ("min_drop", "min_logprob_drop")
_OVERALL_KINDS = ("max_drop", "max_logprob_drop")


def discover_calibrated(models: Sequence[Any], data: Any, layers: Sequence[str], out: Path,
                        *, model_ref: str, data_ref: str,
                        classes: Sequence[str] | None = None, overwrite: bool = False,
                        unit: str = "channel", channel_dim: int | None = None,
                        num_heads: int | None = None, device: str = "cpu") -> str:
    """Write the starter spec of ``models`` (at least :data:`MIN_MODELS`) to ``out`` and
    its calibration file beside it; return the spec's text. ``model_ref`` and
    ``data_ref`` are what the spec's ``model:`` and ``data:`` say (a fixture name or an
    import path): the model the spec will judge, and its data."""
    _check_start(len(models), out, overwrite, "")
    names = list(classes) if classes else [str(k) for k in range(_num_classes(models[0],
                                                                               data))]

    def measure() -> None:
        for i, model in enumerate(models):
            engine = Engine(EngineSettings(device=device, record_mode="calibrate",
                                           full_sweeps=True))
            run = evaluate_spec(out, mapping_lookup({_MODEL: model, _DATA: data}), engine)
            broken = [item for item in run.items if item.outcome in ("error", "failed")]
            if broken:
                message = str(broken[0].message).splitlines()[-1]
                raise ValueError(f"measuring reference model {i + 1} of {len(models)}: "
                                 f"{LOCATION.sub('', message, count=1)}")
            run.record("calibrate", engine.settings.record_level)

    return _write_starter(out, names, layers, measure, len(models), named=bool(classes),
                          unit=unit, channel_dim=channel_dim, num_heads=num_heads,
                          refs=(_MODEL, _DATA), final_refs=(model_ref, data_ref))


def discover_with_fixtures(model_fixture: str, data_ref: str, weights: Sequence[str],
                           layers: Sequence[str], out: Path, *, classes: Sequence[str],
                           weights_var: str = "MODEL_WEIGHTS", overwrite: bool = False,
                           unit: str = "channel", channel_dim: int | None = None,
                           num_heads: int | None = None,
                           pytest_args: Sequence[str] = ()) -> str:
    """:func:`discover_calibrated` through the user's own pytest fixtures: the model
    fixture ``model_fixture`` (which reads the weights file from the environment variable
    ``weights_var``, as the quick start's does) is run once per file of ``weights``, each
    time as ``pytest --unitablate-spec OUT --unitablate-record-mode=calibrate`` in a
    subprocess from the current directory (so its ``conftest.py`` is found)."""
    _check_start(len(weights), out, overwrite, " --weights")
    missing = [w for w in weights if not Path(w).exists()]
    if missing:
        raise ValueError(f"--weights {missing[0]}: no such file")
    refs = (model_fixture, data_ref)
    return _write_starter(
        out, classes, layers, lambda: _calibrate_with_pytest(out, weights, weights_var,
                                                             pytest_args),
        len(weights), named=True, unit=unit, channel_dim=channel_dim, num_heads=num_heads,
        refs=refs, final_refs=refs)


def _check_start(count: int, out: Path, overwrite: bool, what: str) -> None:
    """Enough reference models, and ``out`` free (or to be replaced)."""
    if count < MIN_MODELS:
        raise ValueError(f"discover over several models needs at least {MIN_MODELS} "
                         f"reference models (honest retrains), got {count}{what}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --force to replace it")


def _write_starter(out: Path, names: Sequence[str], layers: Sequence[str],
                   measure: Callable[[], None], count: int, *, named: bool, unit: str,
                   channel_dim: int | None, num_heads: int | None,
                   refs: tuple[str, str], final_refs: tuple[str, str]) -> str:
    """The skeleton (``refs`` as its model and data) at ``out``, calibrated by ``measure``
    (every reference model in record mode ``calibrate``), then rewritten as the starter
    spec (``final_refs``); a failure removes the skeleton and its calibration file."""
    calibration = calibration_path(out)
    if calibration.exists():
        calibration.unlink()  # a new starter spec starts a new calibration
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, skeleton(names, layers, unit=unit, channel_dim=channel_dim,
                               num_heads=num_heads, model_ref=refs[0], data_ref=refs[1],
                               named=named))
    with _removed_on_failure(out):
        measure()
        text = _final(out, names, layers, _addressing(unit, channel_dim, num_heads),
                      *final_refs, count, named=named)
    atomic_write(out, text)
    return text


@contextmanager
def _removed_on_failure(out: Path) -> Iterator[None]:
    """The half-made starter spec and its calibration file go when discovery fails."""
    try:
        yield
    except BaseException:
        for path in (out, calibration_path(out)):
            path.unlink(missing_ok=True)
        raise


def _calibrate_with_pytest(out: Path, weights: Sequence[str], weights_var: str,
                           pytest_args: Sequence[str]) -> None:
    """``pytest --unitablate-record-mode=calibrate`` on ``out`` once per weights file."""
    import os
    import subprocess
    import sys

    for path in weights:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "--unitablate-spec", str(out),
             "--unitablate-record-mode=calibrate", "--unitablate-full-sweeps", "-q",
             "-p", "no:randomly", "-p", "no:cacheprovider", *pytest_args],
            env={**os.environ, weights_var: str(path)}, capture_output=True, text=True,
            check=False)
        if proc.returncode not in (0, 1) or "calibration.json" not in proc.stdout:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise ValueError(f"calibrating on {weights_var}={path} failed (pytest exit "
                             f"{proc.returncode}):\n{tail}")


def _num_classes(model: Any, data: Any) -> int:
    import torch

    from pytest_unitablate.core.data import iter_batches

    inputs, _ = next(iter(iter_batches(data)))
    with torch.no_grad():
        return int(call_model(model, inputs[:1]).shape[-1])


def _addressing(unit: str, channel_dim: int | None, num_heads: int | None) -> list[str]:
    """The spec's lines that say what a unit is; an unknown ``unit`` is refused."""
    if unit not in UNIT_KINDS:
        raise ValueError(f"unit: {unit!r} is not one of: {', '.join(UNIT_KINDS)}")
    if unit == "head":
        return ["unit: head"] + ([f"num_heads: {num_heads}"] if num_heads else [])
    return [f"channel_dim: {channel_dim}"] if channel_dim is not None else []


def _checks(names: Sequence[str], layers: Sequence[str],
            target: Any) -> list[str]:
    lines = ["checks:"]
    for i, layer in enumerate(layers):
        lines += [f"  - layer: {layer}", "    any_unit:", "      expect:"]
        lines += [f"        {name}: {target(i, name)}" for name in names]
        lines += [f"  - layer: {layer}", "    every_unit:", "      expect:",
                  f"        {OVERALL}: {target(i, OVERALL)}"]
    return lines


def skeleton(names: Sequence[str], layers: Sequence[str], *, unit: str = "channel",
             channel_dim: int | None = None, num_heads: int | None = None,
             model_ref: str = _MODEL, data_ref: str = _DATA, named: bool = True) -> str:
    """The starter spec before calibration: every constraint ``null``. ``named=False``:
    ``names`` are class indices (no ``classes:`` line; the targets are ``0``, ``1``, ...).

    >>> print(skeleton(["a", "b"], ["fc1"]).splitlines()[9])
            a: {min_drop: null, min_logprob_drop: null, min_accuracy: null}
    """
    addressing = _addressing(unit, channel_dim, num_heads)

    def target(i: int, name: str) -> str:
        kinds = _OVERALL_KINDS if name == OVERALL else (
            _CLASS_KINDS + (("min_accuracy",) if i == 0 else ()))
        return "{" + ", ".join(f"{k}: null" for k in kinds) + "}"

    head = ["unitablate: 1", f"model: {model_ref}", f"data: {data_ref}",
            *_classes_line(names, named), "ablation: zero", *addressing]
    return "\n".join(head + _checks(names, layers, target)) + "\n"


def _classes_line(names: Sequence[str], named: bool) -> list[str]:
    return [f"classes: [{', '.join(names)}]"] if named else []


def _final(out: Path, names: Sequence[str], layers: Sequence[str], addressing: list[str],
           model_ref: str, data_ref: str, count: int, named: bool = True) -> str:
    """The spec with the calibrated thresholds; unguardable constraints left out, each
    target's comment saying what the models measured."""
    spec = load_spec(out)
    file = CalibrationFile.read(calibration_path(out))
    found: dict[tuple[int, str], list[tuple[str, float | None, str]]] = {}
    for key in item_ids(spec):
        record = static_record(spec, key)
        points = file.points(key.id, definition_of(record))
        rests = calibrated_threshold(key.constraint.kind, points).range_text() if points \
            else "not measured"
        found.setdefault((key.check.index, str(key.expectation.target)), []).append(
            (key.constraint.kind, key.constraint.threshold, rests))

    def target(i: int, name: str) -> str:
        index = 2 * i + (1 if name == OVERALL else 0)
        kept = [(k, t) for k, t, _ in found.get((index, name), []) if t is not None]
        left = [f"{k} ({r})" for k, t, r in found.get((index, name), []) if t is None]
        written = [f"{k}: {format_threshold(k, t)}" for k, t in kept]  # type: ignore[arg-type]
        measured = "; ".join(f"{k} {r}" for k, t, r in found.get((index, name), [])
                             if t is not None)
        comment = f"  # measured {measured}" if measured else ""
        if left:
            comment += f"{'; ' if comment else '  # '}unguardable: {', '.join(left)}"
        return ("{" + ", ".join(written) + "}" if written else "{}") + comment

    head = [
        f"# Starter spec written by `python -m pytest_unitablate discover` over {count} "
        f"reference models:",
        "# every threshold is calibrated from their measurements (the rule of",
        f"# docs/calibration.md; {calibration_path(out).name} holds them). No unit is named:",
        "# across retrains a class's unit moves to another index. A constraint whose",
        "# reference models already reach what a destroyed unit shows is left out",
        "# (\"unguardable\"). Add a reference model with --unitablate-record-mode=calibrate.",
        "unitablate: 1", f"model: {model_ref}", f"data: {data_ref}",
        *_classes_line(names, named), "ablation: zero", *addressing]
    lines = _checks(names, layers, target)
    body = []
    for line in lines:  # a target with nothing guardable stays as a comment only
        if line.rstrip().endswith("{}") or ": {}  #" in line:
            body.append("        # " + line.strip().replace(": {}", ":", 1))
        else:
            body.append(line)
    return "\n".join(head + _drop_empty(body)) + "\n"


def _drop_empty(lines: list[str]) -> list[str]:
    """Checks whose every target was left out become comments too (a check needs one)."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("  - layer:"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("  - layer:"):
                j += 1
            block = lines[i:j]
            if any(line.startswith("        ") and not line.lstrip().startswith("#")
                   for line in block):
                out += block
            else:  # commented out where it stood, its indentation kept
                out += [line if line.lstrip().startswith("#") else "  # " + line[2:]
                        for line in block]
            i = j
        else:
            out.append(lines[i])
            i += 1
    return out
