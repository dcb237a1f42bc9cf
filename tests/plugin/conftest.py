"""Shared set-up of the plugin tests: a pytester directory holding the tiny model."""

from __future__ import annotations

# In-process pytester runs restore sys.modules after each run, so whatever a run imports
# is imported again by the next. torch and scipy's compiled modules cannot be imported a
# second time in one process, and hypothesis' terminal summary imports its internals
# (1.3 s a run): all are loaded here, before any run starts, and stay loaded.
import hypothesis.internal.observability  # noqa: F401
import pytest
import scipy.optimize  # noqa: F401  (identity: signature matching; cannot load twice)
import tiny_source
import torch  # noqa: F401

from pytest_unitablate.plugin.record_mode import CI_VARIABLES


@pytest.fixture
def tiny(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester dir with ``tinymodel.py`` importable and no CI variables set."""
    for var in CI_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    pytester.makepyfile(tinymodel=tiny_source.TINY)
    pytester.syspathinsert()
    return pytester
