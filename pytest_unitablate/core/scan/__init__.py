"""Scan a layer: every unit ablated alone, per-example predictions for each.

One subpackage, one direction of imports (``make lint`` enforces it; no cycle, not even
under ``TYPE_CHECKING``)::

    api          scan(): checks the request, picks an engine, runs it
     ├─ result       ScanResult (rows, frame) and how units become rows; progress: the bar
     ├─ closed_form  exact closed form: per-channel layers, pooling, then one Linear
     ├─ heads        heads through a split before the attention (hook points, Swin)
     ├─ replay       untraceable models: what finishes before the layer replayed
     └─ suffix       the prefix engine: prefix once per batch, stacked ablated copies
         ├─ head_copies  heads from the output projection on: out + (r_h - z_h) W_h
         ├─ prefix   PrefixCache, evaluate_keeping: prefix outputs kept between passes
         │   └─ split  the torch.fx split at a layer, the linear entry convolutions
         ├─ plan     units and examples per suffix pass (measured speed, memory budget)
         │   └─ memory  peak bytes of one traced pass; the default budget
         └─ collect  replacement values, ablated copies, baseline collection

Example::

    from pytest_unitablate.core.scan import scan

    result = scan(model, loader, "layer4")
    result.predictions    # (n_units, n_examples) predicted classes
    result.method         # closed_form, prefix, replay or naive
"""

from pytest_unitablate.core.scan.api import scan
from pytest_unitablate.core.scan.memory import DEFAULT_MEMORY_BUDGET
from pytest_unitablate.core.scan.prefix import PrefixCache, StalePrefix, evaluate_keeping
from pytest_unitablate.core.scan.result import ScanResult

__all__ = ["DEFAULT_MEMORY_BUDGET", "PrefixCache", "ScanResult", "StalePrefix",
           "evaluate_keeping", "scan"]
