"""A child process in which ``import pytest`` fails: what ``run_spec`` and ``python -m
pytest_unitablate check`` must survive (a notebook, a training loop, another runner).

``env_without_pytest(folder)`` writes a ``sitecustomize.py`` there that puts an import
blocker for pytest, its internals and its plugins first on ``sys.meta_path``, and returns
an environment whose ``PYTHONPATH`` starts with that folder.
"""

from __future__ import annotations

import os
from pathlib import Path

BLOCKER = '''
import sys

class _NoPytest:
    """pytest is not installed, as far as this process can tell."""

    BLOCKED = ("pytest", "_pytest", "xdist", "pluggy", "pytest_timeout", "pytest_randomly")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, _NoPytest())
'''


def env_without_pytest(folder: Path, *extra_paths: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCKER)
    paths = [str(folder), *(str(p) for p in extra_paths)]
    old = os.environ.get("PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    return env
