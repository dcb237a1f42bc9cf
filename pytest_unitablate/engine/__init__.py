"""The engine: a spec evaluated for a model and data, with no pytest in it.

The pytest plugin and :func:`run_spec` (and so ``python -m pytest_unitablate check``) are
two front ends of this one engine, the way Hypothesis's engine runs from any test runner
and pytest plugs in through a thin plugin module. Modules, one job each:

* ``engine``: :class:`Engine`, binds references and judges items;
* ``evaluations``: baselines, ablated passes, channel means, store keys;
* ``sweeps``: layer sweeps, unit orders, early stopping;
* ``matching``: signatures, profiles and one-to-one unit matching;
* ``judge``: one item measured and judged (:class:`ItemResult`);
* ``refs``: ``model:``/``data:`` references resolved (fixture names, import paths);
* ``store``: where results are kept (:class:`NullStore`, :class:`DiskStore`);
* ``settings``: :class:`EngineSettings` (torch-free);
* ``run``: :func:`run_spec` and :class:`SpecRun`.

Importing this package imports neither torch nor pytest; its names load on first use.

Example::

    from pytest_unitablate import run_spec

    run = run_spec("specs/resnet.yaml", fixtures={"digits_resnet": model,
                                                  "digits_test": loader})
    assert not run.failed, run.text()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_LAZY = {
    "Engine": "pytest_unitablate.engine.engine",
    "EngineSettings": "pytest_unitablate.engine.settings",
    "ItemResult": "pytest_unitablate.engine.results",
    "DiskStore": "pytest_unitablate.engine.store",
    "NullStore": "pytest_unitablate.engine.store",
    "Store": "pytest_unitablate.engine.store",
    "run_spec": "pytest_unitablate.engine.run",
    "SpecRun": "pytest_unitablate.engine.run",
}

__all__ = ["DiskStore", "Engine", "EngineSettings", "ItemResult", "NullStore", "SpecRun",
           "Store", "run_spec"]

if TYPE_CHECKING:  # pragma: no cover
    from pytest_unitablate.engine.engine import Engine
    from pytest_unitablate.engine.results import ItemResult
    from pytest_unitablate.engine.run import SpecRun, run_spec
    from pytest_unitablate.engine.settings import EngineSettings
    from pytest_unitablate.engine.store import DiskStore, NullStore, Store


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_unitablate.engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
