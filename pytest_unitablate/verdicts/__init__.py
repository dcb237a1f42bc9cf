"""From per-example correctness to verdicts and the text users read (torch-free).

* ``stats``: paired 2x2 tables, Newcombe's interval, McNemar's exact test (pure Python);
* ``measure``: a target's :class:`Measurement` under an ablation, and ``judge()``;
* ``layerwide``: ``any_unit`` / ``every_unit`` judgement and ``top_units`` ranking;
* ``failure``: the failure, warning and "cannot be met" messages.

Example::

    >>> from pytest_unitablate.spec.model import Constraint
    >>> from pytest_unitablate.verdicts.measure import Measurement, judge
    >>> m = Measurement.from_correct([True] * 10, [True] * 6 + [False] * 4)
    >>> judge(Constraint("min_drop", 0.2), m).passed
    True
"""
