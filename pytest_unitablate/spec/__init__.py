"""The spec format (torch-free): what a YAML spec says and how it is read and rewritten.

* ``model``: frozen dataclasses of a loaded spec (format version 1);
* ``yaml_lines``: safe YAML composed into a node tree that keeps line numbers;
* ``loader``: validation that reports every problem at once, as ``path:line: message``;
* ``schema``: the JSON Schema generated from the loader's own key tables;
* ``ids``: deterministic, unique, ``-k``-safe test ids;
* ``rewrite``: record mode's comment-preserving, atomic rewrite of thresholds.

Example::

    from pytest_unitablate.spec.loader import load_spec

    spec = load_spec("specs/resnet.yaml")
    [check.layer for check in spec.checks]
"""
