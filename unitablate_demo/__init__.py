"""Demo package of pytest-unitablate: UCI handwritten digits, two small CNNs, checkpoints.

Everything here runs on a CPU in seconds at run time (numpy + torch only). The data file
and the checkpoints are package data; the scripts that rebuild them are modules runnable
with ``python -m``:

* ``python -m unitablate_demo.build_data``  -- regenerate ``data/digits.npz`` (needs scikit-learn)
* ``python -m unitablate_demo.train --model resnet --seed 0``  -- train a checkpoint
* ``python -m unitablate_demo.findings``  -- the paper's first two findings, as a table
* ``python -m unitablate_demo.oracle --checkpoint resnet --layer layer3.0``  -- per-unit drops
  behind the specs' thresholds
* ``python -m unitablate_demo.outcomes``  -- expected outcome of every spec item per checkpoint

Plain callables for specs that use import paths live in :mod:`unitablate_demo.fixtures`.
See ``docs/demo.md``.

Example::

    >>> from unitablate_demo.models import load_model
    >>> type(load_model("resnet")).__name__
    'DigitsResNet'
"""

from __future__ import annotations

#: The class names the specs use, in label order.
CLASS_NAMES: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)

__all__ = ["CLASS_NAMES"]
