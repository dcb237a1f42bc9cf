"""The passes every evaluation starts from: the baseline, what the check's units are, the
store identity of a model and data, and the located errors of the core.

:class:`Baselines` is the base of :class:`~pytest_unitablate.engine.evaluations.Evaluations`
(which adds the ablated passes and their references). The functions at the end turn an
``EvalResult`` into the arrays the store keeps and back.

Errors of the core become located :class:`~pytest_unitablate.errors.ItemProblem` s at the
spec line that causes them: NaN logits at ``model:``, an output without one logits tensor
at ``output:``, anything the model's forward raises on the data at ``data:``.

Example::

    evals = Baselines(EngineSettings(device="cpu", seed=0), NullStore())
    base = evals.baseline(spec, subject)          # EvalResult, stored under its identity
    evals.units(spec, subject, check).count       # the check's channels or heads
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from pytest_unitablate.core.data import data_fingerprint, iter_batches, require_replayable
from pytest_unitablate.core.evaluation import EvalResult, check_paired, evaluate, model_device
from pytest_unitablate.core.heads import check_heads, head_site
from pytest_unitablate.core.layers import check_units
from pytest_unitablate.core.scan import DEFAULT_MEMORY_BUDGET, PrefixCache, evaluate_keeping
from pytest_unitablate.engine.fingerprint import structure_sha256, weights_sha256
from pytest_unitablate.engine.refs import Subject
from pytest_unitablate.engine.settings import EngineSettings
from pytest_unitablate.engine.store import Store
from pytest_unitablate.engine.units import LayerUnits, resolve_units
from pytest_unitablate.errors import (
    ItemProblem,
    NonFiniteLogitsError,
    OutputError,
    PositionError,
    UnitAblateError,
    UnpairedDataError,
)
from pytest_unitablate.spec.model import Check, Spec

#: The check modes whose layers are swept unit by unit on the evaluation data.

SWEPT = ("any_unit", "every_unit")


def checkpoint_of(model: Any) -> str | None:
    """The checkpoint the model's fixture says its weights came from: its
    ``unitablate_checkpoint`` attribute (a path or name), on the model or on a wrapper's
    inner model; ``None`` when no fixture said.

    >>> m = nn.Linear(2, 2); m.unitablate_checkpoint = "ckpt/candidate.pt"
    >>> checkpoint_of(m), checkpoint_of(nn.Linear(2, 2))
    ('ckpt/candidate.pt', None)
    """
    for obj in (model, getattr(model, "module", None), getattr(model, "model", None)):
        found = getattr(obj, "unitablate_checkpoint", None) if obj is not None else None
        if found is not None:
            return str(found)
    return None


class Baselines:
    """Baselines, unit counts, store identities and located errors."""

    def __init__(self, settings: EngineSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.objects: dict[Any, Any] = {}
        self._evals: dict[tuple[Any, ...], EvalResult] = {}
        self._means: dict[tuple[Any, ...], Any] = {}
        self._units: dict[tuple[Any, ...], LayerUnits] = {}
        self._replayable: set[int] = set()
        self._weights: dict[int, str] = {}  # weights sha256 per model object (hashes())
        self._prefixes: PrefixCache | None = None
        self.dtype: str | None = None

    @property
    def device(self) -> str:
        return self.settings.device

    @property
    def prefixes(self) -> PrefixCache:
        """The core's :class:`~pytest_unitablate.core.scan.PrefixCache`: the unit order
        and the sweeps of one layer share its prefix pass (made on first use)."""
        if self._prefixes is None:
            budget = self.settings.memory_budget
            self._prefixes = PrefixCache(DEFAULT_MEMORY_BUDGET if budget is None else budget)
        return self._prefixes

    # --- checks and located errors -------------------------------------------------------

    def check_subject(self, spec: Spec, subject: Subject) -> None:
        """The model is a module; the data can replay the same examples in the same order
        on every pass (a shuffling loader, a one-shot iterator are refused)."""
        if not isinstance(subject.model, nn.Module):
            raise ItemProblem(
                f"{spec.where(spec.model_line)}: model {spec.model!r} gave a "
                f"{type(subject.model).__name__}, not a torch.nn.Module")
        pairs = [(subject.data, spec.data_line)]
        if subject.ranking is not None:
            pairs.append((subject.ranking, spec.ranking_data_line))
        lines = {ref: line for ref, line in (spec.reference_for(c) for c in spec.checks)
                 if ref is not None}
        pairs += [(value, lines.get(ref, spec.reference_line))
                  for ref, value in sorted(subject.references.items())]
        for value, line in pairs:
            if id(value) not in self._replayable:
                self.guard(spec, line, functools.partial(require_replayable, value))
                self._replayable.add(id(value))

    def guard(self, spec: Spec, line: int, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; turn the core's user errors into located item problems."""
        try:
            return fn()
        except UnitAblateError as exc:
            cause = "model" if isinstance(exc, NonFiniteLogitsError) else getattr(
                exc, "cause", "spec")
            raise ItemProblem(f"{spec.where(line)}: {exc}", cause=cause) from None

    def paired(self, spec: Spec, baseline: EvalResult, other: EvalResult, what: str,
               ranking: bool = False, reference: str | None = None) -> None:
        """A located error unless ``other`` saw the baseline's examples in its order."""
        line = spec.ranking_data_line if ranking and spec.ranking_data else spec.data_line
        self.guard(spec, line, lambda: check_paired(baseline, other, what, reference))

    def located(self, spec: Spec, fn: Callable[[], Any], line: int = 0,
                ranking: bool = False, data: tuple[str, int] | None = None) -> Any:
        """Run an evaluation; put each kind of failure at the spec line that causes it.

        NaN logits are the model's (``model:``), an output that does not hold one logits
        tensor is ``output:`` (or ``model:``), anything the data or the model's forward
        raises on the data is ``data:`` (``data``: another reference and its line, such as
        ``reference:``); ``line`` overrides for ablation problems. Data that a pass finds
        unpaired is the data's line (``ranking_data:`` with ``ranking``).
        """
        try:
            return fn()
        except ItemProblem:
            raise
        except NonFiniteLogitsError as exc:
            raise ItemProblem(f"{spec.where(spec.model_line)}: model {spec.model!r}: {exc}",
                              cause="model") from None
        except OutputError as exc:
            where = spec.output_line or spec.model_line
            raise ItemProblem(f"{spec.where(where)}: model {spec.model!r}: {exc}") from None
        except PositionError as exc:  # position: (the spec's), or model: when it has none
            where = spec.position_line or spec.model_line
            raise ItemProblem(f"{spec.where(where)}: {exc}") from None
        except UnpairedDataError as exc:  # the data's fault, wherever a pass found it out
            where = spec.ranking_data_line if ranking and spec.ranking_data else spec.data_line
            raise ItemProblem(f"{spec.where(where)}: {exc}") from None
        except UnitAblateError as exc:
            raise ItemProblem(f"{spec.where(line or spec.data_line)}: {exc}") from None
        except Exception as exc:  # the model's forward rejected the data (shape, dtype, ...)
            if self.settings.full_trace:
                raise
            ref, where = data if data is not None else (spec.data, spec.data_line)
            raise ItemProblem(
                f"{spec.where(where)}: the model {spec.model!r} raised "
                f"{type(exc).__name__} on the data {ref!r}: {exc}. Check the inputs' "
                f"shape, dtype and device against what the model expects") from None

    def check_model(self, model: nn.Module, spec: Spec | None = None) -> None:
        """The model must already be on the run's device; notes its dtype."""
        if model_device(model) != torch.device(self.device):
            where = f"{spec.where(spec.model_line)}: model {spec.model!r}: " if spec else ""
            raise ItemProblem(
                f"{where}the model is on {model_device(model)} but the run's device is "
                f"{self.device} ({self.settings.device_option}); move the model where it "
                f"is made (we never move it)")
        if self.dtype is None:
            self.dtype = str(next(iter(model.parameters()), torch.empty(0)).dtype).replace(
                "torch.", "")

    def seeded(self) -> None:
        """``torch.manual_seed`` before a pass (seeded random augmentation pairs up)."""
        if self.settings.seed is not None:
            torch.manual_seed(self.settings.seed)

    # --- evaluations ---------------------------------------------------------------------

    def _evaluate(self, model: nn.Module, data: Any, output: int | str | None = None,
                  keep: Sequence[str] = (), spec: Spec | None = None) -> EvalResult:
        """``evaluate()``; with ``keep``, the pass also leaves those layers' prefix outputs
        in :attr:`prefixes` for the unit orders and sweeps that follow."""
        self.seeded()
        self.check_model(model, spec)
        if keep:
            return evaluate_keeping(model, data, keep, self.prefixes, device=self.device,
                                    output=output)
        return evaluate(model, data, device=self.device, output=output)

    def baseline(self, spec: Spec, subject: Subject, ranking: bool = False) -> EvalResult:
        """The unablated pass over the evaluation (or ranking) data."""
        model, data = subject.model, subject.data_for(ranking)
        key = ("base", id(model), id(data))
        if key not in self._evals:
            identity = self.identity(spec, model, data)
            # the layers swept on this data: top_units ranks on the ranking data if any
            if ranking and spec.ranking_data:
                modes: set[str] = {"top_units"}
            else:
                modes = {*SWEPT, *(() if spec.ranking_data else ("top_units",)),
                         *(() if self.settings.plain_passes else ("units",))}
            swept = list(dict.fromkeys(c.layer for c in spec.checks if c.mode in modes))

            def run() -> dict[str, Any]:
                result: EvalResult = self.located(
                    spec, lambda: self._evaluate(model, data, spec.output, swept, spec))
                if identity["data"] and result.fingerprint != identity["data"]:
                    self.paired(spec, replace(result, fingerprint=identity["data"]), result,
                                "the baseline pass", ranking,
                                reference="the pass that fingerprinted the data")
                return eval_arrays(result)

            values = self.store.get_or_compute({**identity, "what": "baseline"}, run)
            self._evals[key] = eval_result(values)
        return self._evals[key]

    def units(self, spec: Spec, subject: Subject, check: Check) -> LayerUnits:
        """What the check's units are on the model (one probing forward, cached); an output
        whose unit dimension is not stated and not N,C,H,W or N,C is a located error."""
        model, data = subject.model, subject.data
        key = (id(model), check.layer, spec.unit_for(check), spec.channel_dim_for(check),
               spec.num_heads_for(check))
        if key not in self._units:
            def run() -> LayerUnits:
                inputs, _ = next(iter(iter_batches(data, device=self.device)))
                return resolve_units(spec, check, model, inputs[:3])

            line = check.layer_line if spec.channel_dim_for(check) is None else check.line
            self._units[key] = self.guard(spec, line, run)
        return self._units[key]

    def channels(self, spec: Spec, subject: Subject, check: Check) -> int:
        """Number of units (channels or heads) of the check's layer."""
        return self.units(spec, subject, check).count

    def check_units(self, spec: Spec, subject: Subject, check: Check) -> None:
        """Located error for a unit outside the layer's units, before evaluating."""
        units = self.units(spec, subject, check)
        if units.unit == "head":
            site = head_site(subject.model, check.layer, units.num_heads)
            self.guard(spec, check.line, lambda: check_heads(site, check.units))
        else:
            self.guard(spec, check.line, lambda: check_units(
                check.layer, check.units, units.count, units.shape, units.channel_dim,
                units.batch_dim))

    def hashes(self, spec: Spec, subject: Subject) -> dict[str, str]:
        """sha256 of the evaluation data and of the model's weights (for provenance).

        The data hash is the baseline pass's fingerprint (the same sha256
        ``core.data.data_fingerprint`` computes), so no extra pass over the data is made.
        """
        out = {"data_sha256": self.baseline(spec, subject).fingerprint[:16],
               "weights_sha256": self.weights_hash(subject.model)[:16]}
        checkpoint = checkpoint_of(subject.model)
        if checkpoint is None and self.settings.weights_source is not None:
            checkpoint = self.settings.weights_source()
        if checkpoint is not None:
            out["checkpoint"] = checkpoint
        refs = []
        for ref, value in sorted(subject.references.items()):
            key = ("reference_sha256", id(value))
            if key not in self.objects:
                self.seeded()
                self.objects[key] = self.guard(
                    spec, spec.reference_line, functools.partial(data_fingerprint, value))
            refs.append(f"{ref}={str(self.objects[key])[:16]}")
        if refs:  # the reference data mean and resample ablation took their values from
            out["reference_sha256"] = ", ".join(refs)
        return out

    def weights_hash(self, model: nn.Module) -> str:
        """sha256 of ``model``'s weights, once per model object and run (the store's key
        and the records' provenance share it)."""
        key = id(model)
        if key not in self._weights:
            self._weights[key] = weights_sha256(model)
        return self._weights[key]

    def identity(self, spec: Spec, model: nn.Module, data: Any) -> dict[str, Any]:
        """What determines every evaluation of ``model`` on ``data``: the store's key.

        The weights and buffers (sha256 of the state dict), the structure (``repr``) and
        the source files of the model's own module classes, a fingerprint of the data's
        inputs and labels in order (one pass over the data, no model), the output key,
        device, dtype, seed and the torch and package versions. Computed once per (model,
        data) and only when the store keeps anything.
        """
        key = ("identity", id(model), id(data), spec.output)
        if key in self.objects:
            found: dict[str, Any] = self.objects[key]
            return found
        self.check_model(model, spec)
        if not self.store.enabled:
            identity: dict[str, Any] = {"data": ""}
        else:
            from pytest_unitablate.version import __version__

            self.seeded()  # a pass like every other: seeded augmentation replays alike
            fingerprint = self.located(spec, lambda: data_fingerprint(data))
            identity = {
                "weights": self.weights_hash(model), "model": structure_sha256(model),
                "data": fingerprint, "output": spec.output,
                "position": getattr(model, "position", None)
                if getattr(type(model), "unitablate_wrapped", None) else None,
                "device": self.device, "dtype": self.dtype, "seed": self.settings.seed,
                "torch": str(torch.__version__), "unitablate": __version__,
                "entries": ENTRY_FORMAT,
            }
        self.objects[key] = identity
        return identity


#: The format of the store's entries: part of every key, so entries an older version wrote
#: (without per-example log-probabilities) are never read.


ENTRY_FORMAT = 2


def eval_arrays(result: EvalResult) -> dict[str, Any]:
    """An :class:`EvalResult` as store values."""
    out = {"labels": result.labels, "predictions": result.predictions,
           "logprob": result.true_logprob,
           "num_classes": result.num_classes, "fingerprint": result.fingerprint}
    if result.shares is not None:
        out["shares"] = result.shares
    return out


def row_result(scanned: Any, row: int) -> EvalResult:
    """Row ``row`` of a :class:`~pytest_unitablate.core.scan.ScanResult` as the
    :class:`EvalResult` of that ablated pass."""
    return EvalResult(labels=scanned.labels, predictions=np.asarray(scanned.predictions[row]),
                      num_classes=scanned.baseline.num_classes,
                      fingerprint=scanned.baseline.fingerprint,
                      logprob=np.asarray(scanned.logprobs[row]),
                      shares=None if scanned.shares is None else
                      np.asarray(scanned.shares[row]))


def eval_result(values: dict[str, Any]) -> EvalResult:
    """Store values back as an :class:`EvalResult`."""
    return EvalResult(labels=np.asarray(values["labels"]),
                      predictions=np.asarray(values["predictions"]),
                      num_classes=int(values["num_classes"]),
                      fingerprint=str(values["fingerprint"]),
                      logprob=np.asarray(values["logprob"]),
                      shares=np.asarray(values["shares"]) if "shares" in values else None)


__all__ = [
    "ENTRY_FORMAT",
    "SWEPT",
    "Baselines",
    "checkpoint_of",
    "eval_arrays",
    "eval_result",
    "row_result",
]
