"""Record mode's policy: which records are written, and the CI guard (torch-free)."""

from __future__ import annotations

from pytest_unitablate.plugin.record_mode import ci_environment, wanted


def test_ci_detection() -> None:
    assert ci_environment({"CI": "true"}) == "CI"
    assert ci_environment({"GITHUB_ACTIONS": "true"}) == "GITHUB_ACTIONS"
    assert ci_environment({"CI": "0"}) is None
    assert ci_environment({"CI": "false"}) is None
    assert ci_environment({}) is None


def _rec(outcome: str, threshold: float | None, value: float | None = 0.1) -> dict[str, object]:
    return {"outcome": outcome, "threshold": threshold, "record_value": value}


def test_modes_select_what_they_say() -> None:
    passed, failed, new = _rec("passed", 0.2), _rec("failed", 0.2), _rec("failed", None)
    unmeasured = _rec("skipped", 0.2, value=None)
    assert [wanted(r, "all") for r in (passed, failed, new, unmeasured)] == [
        True, True, True, False]
    assert [wanted(r, "failed") for r in (passed, failed, new, unmeasured)] == [
        False, True, True, False]
    assert [wanted(r, "new") for r in (passed, failed, new, unmeasured)] == [
        False, False, True, False]
    assert not any(wanted(r, "none") for r in (passed, failed, new))
