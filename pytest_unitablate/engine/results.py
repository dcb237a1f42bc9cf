"""What judging an item gives, and what it needs of the engine (torch-free types).

Example::

    result = ItemResult(record={"id": "conv5-u3-seven-min_drop"})
    result.status, result.message          # ("passed", None)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from pytest_unitablate.core.evaluation import EvalResult
    from pytest_unitablate.engine.evaluations import Evaluations
    from pytest_unitablate.engine.matching import Matching
    from pytest_unitablate.engine.refs import Subject
    from pytest_unitablate.engine.settings import EngineSettings
    from pytest_unitablate.engine.sweeps import Sweeps
    from pytest_unitablate.spec.model import Check, Spec
    from pytest_unitablate.verdicts.calibration import CalibrationFile

Status = Literal["passed", "failed", "error"]


class Engine(Protocol):
    """What judging an item needs of the engine (:class:`~.engine.Engine` has it)."""

    settings: EngineSettings
    evals: Evaluations
    sweeps: Sweeps
    matching: Matching
    provenance_checked: set[str]
    #: specs (by path) whose at-or-below-chance baseline was already said
    chance_noted: set[str]
    engine_warned: set[tuple[str, str]]
    signature_data_warned: set[str]
    #: the calibration file of each spec (by path), read once per process
    calibrations: dict[str, CalibrationFile]

    def ablated(self, spec: Spec, subject: Subject, check: Check,
                units: Sequence[int] | None = None) -> EvalResult: ...


class Miss(Exception):
    """A failed expectation (its text is the failure message)."""


@dataclass
class ItemResult:
    """What judging one item gave."""

    record: dict[str, Any]
    status: Status = "passed"
    #: the failure text (``failed``) or the located problem (``error``)
    message: str | None = None
    #: warnings to show (a pass inside the warn band, an environment drift, ...)
    warnings: list[str] = field(default_factory=list)


__all__ = ["Engine", "ItemResult", "Miss", "Status"]
