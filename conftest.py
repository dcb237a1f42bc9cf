"""Root conftest: the digits demo's fixtures (``unitablate_demo.plugin``).

``digits_resnet``, ``digits_alexnet``, ``digits_vit``, ``digits_test``, ``digits_ranking``;
``--demo-checkpoint NAME_OR_PATH`` (or ``DEMO_CHECKPOINT``) swaps in another checkpoint, e.g.::

    pytest --unitablate-spec specs/resnet.yaml --demo-checkpoint resnet-finetuned
"""

pytest_plugins = ["unitablate_demo.plugin"]
