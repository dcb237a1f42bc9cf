"""Root conftest: the digits demo's fixtures (``unitablate_demo.plugin``).

``digits_resnet``, ``digits_alexnet``, ``digits_vit``, ``digits_test``, ``digits_ranking``;
``--demo-checkpoint NAME_OR_PATH`` (or ``DEMO_CHECKPOINT``) swaps in another checkpoint, e.g.::

    pytest --unitablate-spec specs/resnet.yaml --demo-checkpoint resnet-finetuned

(Imported rather than listed in ``pytest_plugins``, which would mark the demo package for
assertion rewriting and warn in every in-process pytester run.)
"""

from unitablate_demo.plugin import *  # noqa: F403
