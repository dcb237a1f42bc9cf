"""Records from pytest's test reports, and JUnit properties (torch-free).

Every item ships its numbers on its test report as ``report.unitablate`` (a dict, which
crosses xdist with the report); the controller turns each test report into a record with
:func:`record_from_report`. Under JUnit family ``xunit1`` the numbers are also
``unitablate.<field>`` properties of each test case (:func:`junit_properties`); the default
family, ``xunit2``, allows no per-test-case properties. The JSON report, the table and the
summary line are the same as every front end's: :mod:`pytest_unitablate.verdicts.records`.

Example::

    >>> junit_properties({"id": "x", "units": [3], "threshold": None})
    [('unitablate.id', 'x'), ('unitablate.units', '[3]')]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

PROP_PREFIX = "unitablate."


def outcome_of(report: Any) -> str:
    """passed / failed / skipped / xfailed / xpassed / error for a test report."""
    wasxfail = hasattr(report, "wasxfail")
    if report.when != "call" and report.failed:
        return "error"
    if report.skipped:
        return "xfailed" if wasxfail else "skipped"
    if report.passed:
        return "xpassed" if wasxfail else "passed"
    return "failed"


def record_from_report(report: Any) -> dict[str, Any] | None:
    """The item's record from ``report.unitablate`` (None for reports not of spec items)."""
    values = getattr(report, "unitablate", None)
    if not isinstance(values, dict) or "id" not in values:
        return None
    record = dict(values)
    record["outcome"] = outcome_of(report)
    if record["outcome"] in ("failed", "error") and not record.get("reason"):
        # a problem before the engine judged the item (a fixture, an import): the first
        # line of what pytest shows
        text = str(getattr(report, "longreprtext", "") or "").strip()
        record["reason"] = text.splitlines()[0] if text else None
    return record


def junit_properties(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(unitablate.<field>, text)`` pairs for JUnit ``<property>`` elements.

    Lists become JSON; missing values (``None``) are left out rather than written "None".

    >>> junit_properties({"id": "x", "units": [3], "threshold": None, "drop": 0.25})
    [('unitablate.id', 'x'), ('unitablate.units', '[3]'), ('unitablate.drop', '0.25')]
    """
    out = []
    for name, value in values.items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
        out.append((PROP_PREFIX + name, text))
    return out


__all__ = ["junit_properties", "outcome_of", "record_from_report"]
