"""The layer contract of ``make lint`` holds, and breaks on every kind of planted violation.

Each case copies the package to a temporary folder, plants one violation, and runs the same
tools ``make lint`` runs (import-linter with the project's contracts, ruff's TID253 for
module-level imports) against the copy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

LAYERS = "Layers: plugin > engine | analysis > core | verdicts > spec > atomic | errors BROKEN"
CYCLES = "No two modules import each other (no cycles between siblings, at any depth) BROKEN"


def _lazy(statement: str) -> str:
    """``statement`` inside a function appended to a module (a lazy import)."""
    return f"\n\ndef _planted() -> None:\n    {statement}  # noqa: F401\n"


#: (module to append to, code appended, the tool and the words its report must contain)
PLANTS = {
    "core imports pytest": (
        "core/data.py", "\nimport pytest  # noqa: E402,F401\n",
        "lint-imports", "No pytest below the plugin BROKEN"),
    "the engine imports pytest lazily": (
        "engine/run.py", _lazy("import pytest"),
        "lint-imports", "No pytest below the plugin BROKEN"),
    "the engine imports the plugin": (
        "engine/judge.py", _lazy("from pytest_unitablate.plugin import state"),
        "lint-imports", LAYERS),
    "spec imports torch lazily": (
        "spec/ids.py", _lazy("import torch"),
        "lint-imports", "never import torch or numpy, not even lazily BROKEN"),
    "verdicts import the core": (
        "verdicts/measure.py", _lazy("from pytest_unitablate.core import data"),
        "lint-imports", LAYERS),
    "core imports the plugin": (
        "core/layers.py", _lazy("from pytest_unitablate.plugin import state"),
        "lint-imports", LAYERS),
    "two plugin modules import each other": (
        "plugin/item.py", _lazy("from pytest_unitablate.plugin import hooks"),
        "lint-imports", CYCLES),
    "the scan split imports the prefix cache under TYPE_CHECKING": (
        "core/scan/split.py",
        "\nfrom typing import TYPE_CHECKING  # noqa: E402\n\nif TYPE_CHECKING:\n"
        "    from pytest_unitablate.core.scan.prefix import PrefixCache  # noqa: F401\n",
        "lint-imports", "The scan subsystem: api > closed_form"),
    "plugin imports torch at module level": (
        "plugin/report.py", "\nimport torch  # noqa: E402,F401\n",
        "ruff", "TID253"),
    "spec imports the core at module level": (
        "spec/model.py", "\nimport pytest_unitablate.core.data  # noqa: E402,F401\n",
        "ruff", "TID253"),
}


def _copy(tmp_path: Path) -> Path:
    for name in ("pytest_unitablate", "unitablate_demo"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pt", "*.npz"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _run(tool: str, where: Path) -> subprocess.CompletedProcess[str]:
    if tool == "lint-imports":
        cmd = [str(LINT_IMPORTS), "--no-cache", "--no-logo"]
    else:
        cmd = [sys.executable, "-m", "ruff", "check", "--no-cache", "pytest_unitablate"]
    return subprocess.run(cmd, cwd=where, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(where), "PATH": str(Path(sys.executable).parent)})


@pytest.mark.parametrize("tool", ["lint-imports", "ruff"])
def test_the_tree_keeps_the_contract(tool: str, tmp_path: Path) -> None:
    result = _run(tool, _copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_planted_violation_breaks_the_contract(plant: str, tmp_path: Path) -> None:
    module, code, tool, words = PLANTS[plant]
    where = _copy(tmp_path)
    target = where / "pytest_unitablate" / module
    target.write_text(target.read_text() + code)
    result = _run(tool, where)
    assert result.returncode != 0, f"{plant}: {tool} did not fail\n{result.stdout}"
    assert words in result.stdout, result.stdout + result.stderr
