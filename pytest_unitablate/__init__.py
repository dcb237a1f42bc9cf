"""pytest-unitablate: regression tests for the class-specific importance of CNN units.

The package has five layers (``docs/architecture.md`` draws the map):

* :mod:`pytest_unitablate.core` (torch, no pytest): layers, ablation, data, evaluation, scans;
* :mod:`pytest_unitablate.spec` (torch-free): the spec format, its loader, schema and ids;
* :mod:`pytest_unitablate.verdicts` (torch-free): statistics, judgement, failure text, records;
* :mod:`pytest_unitablate.engine` (torch, no pytest): a spec evaluated and judged
  (:func:`run_spec`; ``python -m pytest_unitablate check``);
* :mod:`pytest_unitablate.plugin` (pytest; torch only when a spec runs): binds fixtures and
  items to the engine;

plus :mod:`pytest_unitablate.analysis` (unit attributes, discovery, the HTML report).

The public API is imported lazily, so ``import pytest_unitablate`` (done by pytest for every
run once the plugin is installed) does not import torch.

Example::

    from pytest_unitablate import ablate, evaluate

    base = evaluate(model, loader)
    with ablate(model, {"layer4.1.conv2": [245]}):
        ablated = evaluate(model, loader)
    print(base.class_accuracy - ablated.class_accuracy)   # per-class drop

    from pytest_unitablate import run_spec

    run = run_spec("specs/resnet.yaml", fixtures={"digits_resnet": model,
                                                  "digits_test": loader})
    assert run.ok, run.text()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_unitablate.version import __version__

_LAZY = {
    "ablate": "pytest_unitablate.core.ablation",
    "channel_means": "pytest_unitablate.core.ablation",
    "evaluate": "pytest_unitablate.core.evaluation",
    "EvalResult": "pytest_unitablate.core.evaluation",
    "scan": "pytest_unitablate.core.scan",
    "next_token": "pytest_unitablate.core.next_token",
    "GroupedData": "pytest_unitablate.core.data",
    "ScanResult": "pytest_unitablate.core.scan",
    "PrefixCache": "pytest_unitablate.core.scan",
    "load_spec": "pytest_unitablate.spec.loader",
    "run_spec": "pytest_unitablate.engine.run",
    "SpecError": "pytest_unitablate.errors",
    "UnitAblateError": "pytest_unitablate.errors",
    "SpecRun": "pytest_unitablate.engine.run",
    "unit_attributes": "pytest_unitablate.analysis.attributes",
    "attribute_correlations": "pytest_unitablate.analysis.attributes",
    "discover": "pytest_unitablate.analysis.discover",
}

__all__ = [
    "EvalResult",
    "GroupedData",
    "PrefixCache",
    "ScanResult",
    "SpecError",
    "SpecRun",
    "UnitAblateError",
    "__version__",
    "ablate",
    "attribute_correlations",
    "channel_means",
    "discover",
    "evaluate",
    "load_spec",
    "next_token",
    "run_spec",
    "scan",
    "unit_attributes",
]

if TYPE_CHECKING:  # pragma: no cover
    from pytest_unitablate.analysis.attributes import attribute_correlations, unit_attributes
    from pytest_unitablate.analysis.discover import discover
    from pytest_unitablate.core.ablation import ablate, channel_means
    from pytest_unitablate.core.evaluation import EvalResult, evaluate
    from pytest_unitablate.core.scan import PrefixCache, ScanResult, scan
    from pytest_unitablate.engine.run import SpecRun, run_spec
    from pytest_unitablate.errors import SpecError, UnitAblateError
    from pytest_unitablate.spec.loader import load_spec


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_unitablate' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
