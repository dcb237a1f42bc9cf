"""The torch core: usable without pytest, never imports it.

* ``layers``: dotted layer names from ``named_modules()``, unit range checks, output probes;
* ``ablation``: the ``ablate()`` context manager and channel means;
* ``data``: ``(inputs, labels)`` batches from a loader, a ``Dataset`` or ``(X, y)``;
* ``evaluation``: ``evaluate()`` and ``EvalResult`` (per-example correctness, in data order);
* ``scan``: every unit of a layer ablated alone (``scan()``), choosing an engine;
* ``scan_fx``: the ``torch.fx`` prefix/suffix engine ``scan`` uses where it can.

Example::

    from pytest_unitablate.core.ablation import ablate
    from pytest_unitablate.core.evaluation import evaluate

    with ablate(model, {"layer3.0": [0]}):
        result = evaluate(model, loader)
"""
