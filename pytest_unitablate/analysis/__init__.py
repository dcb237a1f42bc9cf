"""Analysis on top of the core (torch; pandas where noted).

* ``attributes``: unit attributes (selectivity, weight norms, activation statistics) and
  their correlation with ablation damage (pandas, scipy);
* ``discover``: a model and data to a starter spec that passes
  (``python -m pytest_unitablate discover``);
* ``html_report``: the self-contained HTML page of a run's records (pandas).

Example::

    from pytest_unitablate.analysis.attributes import unit_attributes

    table = unit_attributes(model, loader, "layer3.1")
"""
