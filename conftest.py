"""Root conftest: the digits demo's fixtures (``unitablate_demo.plugin``).

``digits_resnet``, ``digits_alexnet``, ``digits_vit``, ``digits_test``, ``digits_ranking``;
``--demo-checkpoint NAME_OR_PATH`` (or ``DEMO_CHECKPOINT``) swaps in another checkpoint, e.g.::

    pytest --unitablate-spec specs/resnet.yaml --demo-checkpoint resnet-finetuned

(Imported rather than listed in ``pytest_plugins``, which would mark the demo package for
assertion rewriting and warn in every in-process pytester run.)
"""

from typing import Any

from unitablate_demo.plugin import *  # noqa: F403
from unitablate_demo.plugin import pytest_configure as _demo_configure


def pytest_configure(config: Any) -> None:
    """The demo plugin's own configure (``DEMO_CHECKPOINT`` chooses the weights), then
    ``UNITABLATE_TEST_THREADS=N`` (``make test-numerics``): the suite again with another
    torch thread count and ``torch.use_deterministic_algorithms``, so that an assertion that
    holds only for one summation order shows up before another CPU finds it."""
    import os

    _demo_configure(config)

    threads = os.environ.get("UNITABLATE_TEST_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
        torch.use_deterministic_algorithms(True)
