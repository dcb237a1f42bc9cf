"""Per-session state of the plugin: models, data and every evaluation, computed once.

This is the only plugin module that imports torch, and it does so when the first spec item
runs. The baseline is evaluated once per (model, data); every distinct ablation (layer,
units, ablation kind) once, however many expectations share it; a layer-wide sweep once
per (model, data, layer, ablation).

Model and data references are pytest fixture names (``request.getfixturevalue``) or
``package.module:callable`` import paths, called once per session.

Example (what an item does)::

    state = UnitAblateSession(device="cpu", seed=0)
    baseline = state.baseline(spec, request)
    ablated = state.ablated(spec, check, request)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_unitablate.errors import UnitAblateError
from pytest_unitablate.spec.model import Check, Spec

if TYPE_CHECKING:
    import pytest
    from torch import nn

    from pytest_unitablate.core.evaluation import EvalResult


class ItemProblem(Exception):
    """A located, user-facing problem of one item (rendered without a traceback)."""


@dataclass(frozen=True)
class Sweep:
    """Every unit of a layer ablated alone: per-unit predictions on the evaluation data."""

    units: tuple[int, ...]
    predictions: Any  # np.ndarray (n_units, n_examples)
    labels: Any  # np.ndarray (n_examples,)
    baseline: Any = None  # EvalResult of the sweep's own pass (its fingerprint)


class UnitAblateSession:
    """Caches shared by all items of a pytest session (one per xdist worker)."""

    def __init__(self, *, device: str = "cpu", seed: int | None = None,
                 full_trace: bool = False) -> None:
        self.device = device
        self.seed = seed
        self.full_trace = full_trace
        self._objects: dict[Any, Any] = {}
        self._evals: dict[tuple[Any, ...], EvalResult] = {}
        self._means: dict[tuple[Any, ...], Any] = {}
        self._sweeps: dict[tuple[Any, ...], Sweep] = {}
        self._channels: dict[tuple[Any, ...], int] = {}
        self._replayable: set[int] = set()
        self.dtype: str | None = None

    # --- references ---------------------------------------------------------------------

    def resolve(self, ref: str, what: str, line: int, spec: Spec,
                request: pytest.FixtureRequest) -> Any:
        """A fixture value or the result of an import-path callable (cached)."""
        if ":" not in ref:
            try:
                return request.getfixturevalue(ref)
            except Exception as exc:
                # An unknown name gets a located message; the fixture's own failure goes
                # through untouched, so pytest reports it as the fixture's setup error.
                if type(exc).__name__ != "FixtureLookupError":
                    raise
                raise ItemProblem(
                    f"{spec.where(line)}: {what} {ref!r}: no fixture of that name is "
                    f"visible from {spec.path} (define it in a conftest.py above the spec, "
                    f"or use 'package.module:callable')"
                ) from None
        if ref in self._objects:
            return self._objects[ref]
        module_name, _, attr = ref.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception as exc:
            raise ItemProblem(
                f"{spec.where(line)}: {what} {ref!r}: cannot import {module_name!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ItemProblem(
                    f"{spec.where(line)}: {what} {ref!r}: module {module_name!r} has no "
                    f"attribute {attr!r}"
                ) from None
            obj = getattr(obj, part)
        if not callable(obj):
            raise ItemProblem(f"{spec.where(line)}: {what} {ref!r} is not callable")
        try:
            value = obj()
        except Exception as exc:
            raise ItemProblem(
                f"{spec.where(line)}: {what} {ref!r} raised {type(exc).__name__}: {exc}"
            ) from None
        self._objects[ref] = value
        return value

    def prepare(self, spec: Spec, request: pytest.FixtureRequest) -> None:
        """Resolve the spec's model and data (the item's setup phase)."""
        self.model(spec, request)
        self.data(spec, request)
        if spec.ranking_data:
            self.data(spec, request, ranking=True)

    def model(self, spec: Spec, request: pytest.FixtureRequest) -> nn.Module:
        from torch import nn

        model = self.resolve(spec.model, "model", spec.model_line, spec, request)
        if not isinstance(model, nn.Module):
            raise ItemProblem(
                f"{spec.where(spec.model_line)}: model {spec.model!r} gave a "
                f"{type(model).__name__}, not a torch.nn.Module"
            )
        return model

    def data(self, spec: Spec, request: pytest.FixtureRequest, ranking: bool = False) -> Any:
        """The evaluation (or ranking) data, refused if it cannot replay the same examples
        in the same order on every pass (a shuffling loader, a one-shot iterator)."""
        from pytest_unitablate.core.data import require_replayable

        if ranking and spec.ranking_data:
            ref, what, line = spec.ranking_data, "ranking_data", spec.ranking_data_line
        else:
            ref, what, line = spec.data, "data", spec.data_line
        value = self.resolve(ref, what, line, spec, request)
        if id(value) not in self._replayable:
            self._guard(spec, line, lambda: require_replayable(value))
            self._replayable.add(id(value))
        return value

    def _paired(self, spec: Spec, baseline: EvalResult, other: EvalResult, what: str,
                ranking: bool = False) -> None:
        """A located error unless ``other`` saw the baseline's examples in its order."""
        from pytest_unitablate.core.evaluation import check_paired

        line = spec.ranking_data_line if ranking and spec.ranking_data else spec.data_line
        self._guard(spec, line, lambda: check_paired(baseline, other, what))

    # --- evaluations --------------------------------------------------------------------

    def _guard(self, spec: Spec, line: int, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; turn the core's user errors into located item problems."""
        try:
            return fn()
        except UnitAblateError as exc:
            raise ItemProblem(f"{spec.where(line)}: {exc}") from None

    def _evaluate(self, model: nn.Module, data: Any, output: int | str | None = None
                  ) -> EvalResult:
        import torch

        from pytest_unitablate.core.evaluation import evaluate, model_device

        if self.seed is not None:
            torch.manual_seed(self.seed)
        if model_device(model) != torch.device(self.device):
            raise ItemProblem(
                f"the model is on {model_device(model)} but --unitablate-device is "
                f"{self.device}; move the model in its fixture (we never move it)"
            )
        if self.dtype is None:
            self.dtype = str(next(iter(model.parameters()), torch.empty(0)).dtype).replace(
                "torch.", "")
        return evaluate(model, data, device=self.device, output=output)

    def _located(self, spec: Spec, fn: Callable[[], Any], line: int = 0) -> Any:
        """Run an evaluation; put each kind of failure at the spec line that causes it.

        NaN logits are the model's (``model:``), an output that does not hold one logits
        tensor is ``output:`` (or ``model:``), anything the data or the model's forward
        raises on the data is ``data:``; ``line`` overrides for ablation problems.
        """
        from pytest_unitablate.errors import NonFiniteLogitsError, OutputError

        try:
            return fn()
        except ItemProblem:
            raise
        except NonFiniteLogitsError as exc:
            raise ItemProblem(f"{spec.where(spec.model_line)}: model {spec.model!r}: {exc}"
                              ) from None
        except OutputError as exc:
            where = spec.output_line or spec.model_line
            raise ItemProblem(f"{spec.where(where)}: model {spec.model!r}: {exc}") from None
        except UnitAblateError as exc:
            raise ItemProblem(f"{spec.where(line or spec.data_line)}: {exc}") from None
        except Exception as exc:  # the model's forward rejected the data (shape, dtype, ...)
            if self.full_trace:
                raise
            raise ItemProblem(
                f"{spec.where(spec.data_line)}: the model {spec.model!r} raised "
                f"{type(exc).__name__} on the data {spec.data!r}: {exc}. Check the inputs' "
                f"shape, dtype and device against what the model expects") from None

    def baseline(self, spec: Spec, request: pytest.FixtureRequest,
                 ranking: bool = False) -> EvalResult:
        model = self.model(spec, request)
        data = self.data(spec, request, ranking)
        key = ("base", id(model), id(data))
        if key not in self._evals:
            self._evals[key] = self._located(
                spec, lambda: self._evaluate(model, data, spec.output))
        return self._evals[key]

    def _ablation_arg(self, spec: Spec, check: Check) -> str | float:
        ab = spec.ablation_for(check)
        return float(ab.value) if ab.kind == "constant" and ab.value is not None else ab.kind

    def _layer_means(self, spec: Spec, check: Check, model: nn.Module, data: Any) -> Any:
        from pytest_unitablate.core.ablation import channel_means

        key = (id(model), id(data), check.layer, spec.channel_dim)
        if key not in self._means:
            self._means[key] = self._guard(spec, check.layer_line, lambda: channel_means(
                model, data, [check.layer], channel_dim=spec.channel_dim, device=self.device))
        return self._means[key]

    def ablated(self, spec: Spec, check: Check, request: pytest.FixtureRequest,
                units: Sequence[int] | None = None) -> EvalResult:
        """Evaluation with ``units`` (default: the check's) of the check's layer ablated."""
        from pytest_unitablate.core.ablation import ablate

        model = self.model(spec, request)
        data = self.data(spec, request)
        chosen = tuple(check.units if units is None else units)
        arg = self._ablation_arg(spec, check)
        key = ("abl", id(model), id(data), check.layer, tuple(sorted(chosen)), arg,
               spec.channel_dim)
        if key not in self._evals:
            means = self._layer_means(spec, check, model, data) if arg == "mean" else None

            def run() -> EvalResult:
                with ablate(model, {check.layer: list(chosen)}, ablation=arg, means=means,
                            channel_dim=spec.channel_dim):
                    return self._evaluate(model, data, spec.output)

            result: EvalResult = self._located(spec, run, check.layer_line)
            self._paired(spec, self.baseline(spec, request), result,
                         f"the pass with {check.layer} units {list(chosen)} ablated")
            self._evals[key] = result
        return self._evals[key]

    def channels(self, spec: Spec, check: Check, request: pytest.FixtureRequest) -> int:
        """Number of units of the check's layer (one probing forward, cached)."""
        from pytest_unitablate.core.data import iter_batches
        from pytest_unitablate.core.layers import probe_layers

        model = self.model(spec, request)
        data = self.data(spec, request)
        key = (id(model), check.layer, spec.channel_dim)
        if key not in self._channels:
            def run() -> int:
                inputs, _ = next(iter(iter_batches(data, device=self.device)))
                info = probe_layers(model, inputs[:2], [check.layer],
                                    channel_dim=spec.channel_dim)
                return info[check.layer].channels

            self._channels[key] = self._guard(spec, check.layer_line, run)
        return self._channels[key]

    def hashes(self, spec: Spec, request: pytest.FixtureRequest) -> dict[str, str]:
        """sha256 of the evaluation data and of the model's weights (for provenance).

        The data hash is the baseline pass's fingerprint (the same sha256
        ``core.data.data_fingerprint`` computes), so no extra pass over the data is made.
        """
        import hashlib

        model = self.model(spec, request)
        data = self.data(spec, request)
        key = ("hash", id(model), id(data))
        if key not in self._objects:
            digest = hashlib.sha256()
            for name, tensor in sorted(model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
            self._objects[key] = {
                "data_sha256": self.baseline(spec, request).fingerprint[:16],
                "weights_sha256": digest.hexdigest()[:16],
            }
        result: dict[str, str] = self._objects[key]
        return result

    def check_units(self, spec: Spec, check: Check, request: pytest.FixtureRequest) -> None:
        """Located error for a unit outside the layer's channels, before evaluating."""
        from pytest_unitablate.core.layers import check_units

        channels = self.channels(spec, check, request)
        self._guard(spec, check.line, lambda: check_units(check.layer, check.units, channels))

    def sweep(self, spec: Spec, check: Check, request: pytest.FixtureRequest,
              ranking: bool = False) -> Sweep:
        """Every unit of the layer ablated alone (one evaluation per unit, cached)."""
        import numpy as np

        model = self.model(spec, request)
        data = self.data(spec, request, ranking)
        arg = self._ablation_arg(spec, check)
        key = (id(model), id(data), check.layer, arg, spec.channel_dim)
        if key in self._sweeps:
            return self._sweeps[key]
        channels = self.channels(spec, check, request)
        units = tuple(range(channels))
        means = self._layer_means(spec, check, model, data) if arg == "mean" else None

        def run() -> Sweep:
            import torch

            from pytest_unitablate.core.scan import scan

            if self.seed is not None:
                torch.manual_seed(self.seed)
            result = scan(model, data, check.layer, units=units, ablation=arg,
                          means=means, channel_dim=spec.channel_dim, device=self.device,
                          output=spec.output)
            return Sweep(units=units, predictions=np.asarray(result.predictions),
                         labels=np.asarray(result.labels), baseline=result.baseline)

        sweep: Sweep = self._located(spec, run, check.layer_line)
        self._paired(spec, self.baseline(spec, request, ranking), sweep.baseline,
                     f"the sweep of {check.layer}", ranking)
        self._sweeps[key] = sweep
        return sweep
