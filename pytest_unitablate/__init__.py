"""pytest-unitablate: regression tests for the class-specific importance of CNN units.

The public API is imported lazily, so ``import pytest_unitablate`` (done by pytest for every
run once the plugin is installed) does not import torch.

Example::

    from pytest_unitablate import ablate, evaluate

    base = evaluate(model, loader)
    with ablate(model, {"layer4.1.conv2": [245]}):
        ablated = evaluate(model, loader)
    print(base.class_accuracy - ablated.class_accuracy)   # per-class drop
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_LAZY = {
    "ablate": "pytest_unitablate.ablation",
    "channel_means": "pytest_unitablate.ablation",
    "evaluate": "pytest_unitablate.evaluation",
    "EvalResult": "pytest_unitablate.evaluation",
    "scan": "pytest_unitablate.scanning",
    "ScanResult": "pytest_unitablate.scanning",
}

__all__ = [
    "EvalResult",
    "ScanResult",
    "__version__",
    "ablate",
    "channel_means",
    "evaluate",
    "scan",
]

if TYPE_CHECKING:  # pragma: no cover
    from pytest_unitablate.ablation import ablate, channel_means
    from pytest_unitablate.evaluation import EvalResult, evaluate
    from pytest_unitablate.scanning import ScanResult, scan


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_unitablate' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
