"""Packaging: a licence, complete metadata, extras that hold what their names say."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DEV_TOOLS = ("mypy", "ruff", "import-linter", "nox", "mutmut", "mkdocs")


def _names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[ ;@]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_licence_ships_and_the_metadata_is_complete() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    classifiers = PROJECT["classifiers"]
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert {"Programming Language :: Python :: 3.10", "Programming Language :: Python :: 3.11",
            "Typing :: Typed", "Framework :: Pytest"} <= set(classifiers)
    assert "placeholder" not in str(PROJECT["authors"]).lower()
    assert PROJECT["readme"] == "README.md"


def test_the_test_extra_holds_no_contributor_tools_and_dev_holds_them() -> None:
    extras = PROJECT["optional-dependencies"]
    assert not _names(extras["test"]) & set(DEV_TOOLS)
    assert set(DEV_TOOLS) <= _names(extras["dev"])
    assert "pytest-unitablate" in _names(extras["dev"])  # dev = test + the tools


def test_the_demo_ships_its_specs_and_the_script_is_declared() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "specs/*" in data["package-data"]["unitablate_demo"]
    assert PROJECT["scripts"]["unitablate"] == "pytest_unitablate.__main__:main"
