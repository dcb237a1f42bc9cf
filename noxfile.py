"""The compatibility matrix: the plugin's tests on the oldest and newest pytest we support,
and once without pytest-xdist installed.

    .venv/bin/nox                      # every session (what `make matrix` and CI run)
    .venv/bin/nox -s "compat(pytest='8.0.2', xdist=True)"

Each session is a fresh virtualenv with torch 2.13.0, whose CPU wheel this machine kind
installs from a local file (torchvision is not needed: the matrix runs the plugin, spec and
verdict tests, which use a hand-built model). The main suite (`make test`) runs the newest
pytest with torch 2.14.1 and torchvision; the two torch versions are part of the matrix too.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

#: The oldest pytest pyproject.toml claims (pytest>=8.0) and the newest that installs here.
OLDEST = "8.0.2"
NEWEST = "9.2.0"

TORCH = "torch==2.13.0"
TEST_DEPS = ["hypothesis>=6.100", "scipy>=1.10", "jsonschema>=4.0",
             "pytest-rerunfailures>=14", "pytest-timeout>=2.3", "pillow>=10"]
SUITES = ["tests/plugin", "tests/spec", "tests/verdicts"]


@nox.session(python="3.11")
@nox.parametrize(("pytest", "xdist"), [(OLDEST, True), (NEWEST, True), (NEWEST, False)],
                 ids=[f"pytest{OLDEST}", f"pytest{NEWEST}", f"pytest{NEWEST}-no-xdist"])
def compat(session: nox.Session, pytest: str, xdist: bool) -> None:
    """The plugin, spec and verdict tests (fast and slow) on one pytest version."""
    session.install(TORCH)
    deps = [f"pytest=={pytest}", *TEST_DEPS, *(["pytest-xdist>=3.5"] if xdist else [])]
    session.install(*deps)
    session.install("-e", ".")  # torch>=2.1 and pytest>=8.0 are met by the pins above
    session.run("python", "-c", "import pytest, torch; print('pytest', pytest.__version__, "
                "'torch', torch.__version__)")
    if not xdist:
        session.run("python", "-c", "import importlib.util, sys; "
                    "sys.exit(importlib.util.find_spec('xdist') is not None)")
    select = [] if xdist else ["-m", "not requires_xdist"]
    session.run("pytest", *SUITES, "-p", "no:cacheprovider", "-q", *select,
                env={"OMP_NUM_THREADS": "1"})
