"""``python -m pytest_unitablate``: the command line of :mod:`pytest_unitablate.cli`.

Example::

    python -m pytest_unitablate check specs/resnet.yaml --fixture digits_resnet=pkg:model
"""

from __future__ import annotations

import sys

from pytest_unitablate.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
