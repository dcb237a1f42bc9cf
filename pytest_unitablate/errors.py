"""The package's exception hierarchy (torch-free).

Every error a user can cause (a bad spec, an unknown layer, bad data, a hook that cannot
work on this model) is a :class:`UnitAblateError`, with a message that says where and what.
Internal bugs stay ordinary exceptions so they are not mistaken for user errors.

Example::

    >>> from pytest_unitablate.errors import LayerNotFoundError, UnitAblateError
    >>> issubclass(LayerNotFoundError, UnitAblateError)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class UnitAblateError(Exception):
    """Base class of every error pytest-unitablate raises on purpose."""


# --- model / layer addressing -------------------------------------------------------------


class LayerNotFoundError(UnitAblateError, LookupError):
    """A dotted layer name that ``model.named_modules()`` does not yield.

    ``suggestions`` holds the closest existing names (may be empty).
    """

    def __init__(self, message: str, *, layer: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.layer = layer
        self.suggestions = tuple(suggestions)


class UnitOutOfRangeError(UnitAblateError, IndexError):
    """A unit index outside ``0 .. channels - 1`` of the layer's output."""

    def __init__(self, message: str, *, layer: str, unit: int, channels: int) -> None:
        super().__init__(message)
        self.layer = layer
        self.unit = unit
        self.channels = channels


class HookError(UnitAblateError):
    """A forward hook cannot give a correct ablation on this model."""


class LayerCalledTwiceError(HookError):
    """The hooked module ran more than once in one forward (a shared module)."""


class LayerNeverRanError(HookError):
    """The hooked module did not run during the forward pass."""


class UnsupportedModelError(HookError):
    """A wrapper (TorchScript, DataParallel, ``torch.compile``) or output type we refuse."""


# --- data / evaluation --------------------------------------------------------------------


class DataError(UnitAblateError, ValueError):
    """Evaluation data that cannot be evaluated (shapes, labels, empty data)."""


class OutputError(DataError):
    """The model's output does not hold one logits tensor where the spec says it does."""


class PositionError(DataError):
    """A language model's next-token position cannot be read (missing ``position:``, an
    index outside the sequence, a mask that keeps nothing)."""


class UnpairedDataError(DataError):
    """Two passes over the data saw different examples or a different order."""


class NonFiniteLogitsError(DataError):
    """The model produced NaN or infinite logits."""


# --- spec files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One located problem in a spec file; ``line`` is 1-based (0 when unknown)."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class SpecError(UnitAblateError):
    """A spec file with one or more problems, all reported at once."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ItemProblem(UnitAblateError):
    """A located problem of one spec item that is not a threshold miss: a model or data
    reference that does not resolve, data that cannot be paired, a class with too few
    examples, a unit outside its layer. Its message starts with ``path:line:``; a front
    end shows it without a traceback (pytest: an error; ``run_spec``: outcome ``error``).

    ``cause`` says whose it is: ``"spec"`` (the default: the spec does not fit the model or
    data, such as an unknown layer, a unit out of range, a loader that shuffles, inputs of the
    wrong dtype) or ``"model"`` (the model under test is broken: NaN logits, a model factory
    that raised). A run whose only failures are spec problems exits 2, as a spec that does
    not load does; a broken model is a failure like a missed threshold (exit 1).

    >>> ItemProblem("s.yaml:3: no layer 'conv9'").cause, ItemProblem("x", cause="model").cause
    ('spec', 'model')
    """

    def __init__(self, message: str, *, cause: str = "spec") -> None:
        super().__init__(message)
        self.cause = cause


class ConfigError(UnitAblateError):
    """A bad option, or a model/data reference that cannot be resolved."""


class MissingExtraError(UnitAblateError, ImportError):
    """A feature needs a package of an optional extra that is not installed."""


def optional_import(module: str, extra: str, feature: str) -> Any:
    """Import ``module`` for ``feature``, or say which extra installs it.

    >>> optional_import("json", "scan", "a test").dumps(1)
    '1'
    >>> try:
    ...     optional_import("no_such_module_here", "scan", "ScanResult.frame")
    ... except MissingExtraError as exc:
    ...     print(exc)
    ScanResult.frame needs no_such_module_here, which is not installed: pip install \
'pytest-unitablate[scan]'
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise MissingExtraError(
            f"{feature} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'pytest-unitablate[{extra}]'") from None

def torch_missing(what: str) -> str | None:
    """``None`` when torch imports, else the one line that says how to install it.

    torch is a dependency, but a ``pip install --no-deps``, a broken wheel or an environment
    built for another project can lack it; a spec run then stops with this line (exit 4)
    instead of a ``ModuleNotFoundError`` from deep inside.

    >>> torch_missing("--unitablate-spec") is None  # torch is installed here
    True
    """
    import importlib.util

    try:  # finds torch without importing it (a configure hook must stay cheap)
        found = importlib.util.find_spec("torch") is not None
    except ImportError:
        found = False
    if found:
        return None
    return (f"{what} needs torch, which is not installed: pip install torch "
            f"(CPU-only: pip install torch --index-url https://download.pytorch.org/whl/cpu)")

