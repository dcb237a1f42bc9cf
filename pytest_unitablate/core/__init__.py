"""The torch core: usable without pytest, never imports it.

* ``layers``: dotted layer names from ``named_modules()``, unit range checks, output probes;
* ``ablation``: the ``ablate()`` context manager and channel means;
* ``data``: ``(inputs, labels)`` batches from a loader, a ``Dataset`` or ``(X, y)``;
* ``evaluation``: ``evaluate()`` and ``EvalResult`` (per-example correctness, in data order);
* ``scan`` (a subpackage): every unit of a layer ablated alone (``scan()``), its engines
  (closed form, the ``torch.fx`` prefix/suffix split, the naive loop), how passes are
  sized (measured speed, a memory budget) and the prefix outputs kept between passes;
* ``unit_order``: the first-order damage estimate that orders layer-wide checks;
* ``identity``: class-damage signatures and one-to-one unit matching.

Example::

    from pytest_unitablate.core.ablation import ablate
    from pytest_unitablate.core.evaluation import evaluate

    with ablate(model, {"layer3.0": [0]}):
        result = evaluate(model, loader)
"""
