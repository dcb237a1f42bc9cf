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

import contextlib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_unitablate.errors import UnitAblateError
from pytest_unitablate.plugin.eval_cache import EvalCache
from pytest_unitablate.spec.model import Check, Spec

if TYPE_CHECKING:
    import pytest
    from torch import nn

    from pytest_unitablate.core.evaluation import EvalResult
    from pytest_unitablate.core.identity import Match
    from pytest_unitablate.spec.signatures import Signatures


class ItemProblem(Exception):
    """A located, user-facing problem of one item (rendered without a traceback)."""


@dataclass(frozen=True)
class Sweep:
    """Every unit of a layer ablated alone: per-unit predictions on the evaluation data."""

    units: tuple[int, ...]
    predictions: Any  # np.ndarray (n_units, n_examples)
    labels: Any  # np.ndarray (n_examples,)
    baseline: Any = None  # EvalResult of the sweep's own pass (its fingerprint)
    method: str = ""  # the scan engine that ran: closed_form, prefix or naive
    reason: str = ""  # why a faster engine was refused
    plan: str = ""  # the prefix engine's units and examples per pass, and what chose them


class UnitAblateSession:
    """Caches shared by all items of a pytest session (one per xdist worker)."""

    def __init__(self, *, device: str = "cpu", seed: int | None = None,
                 full_trace: bool = False, cache: EvalCache | None = None,
                 worker: tuple[int, int] = (0, 1), memory_budget: int | None = None,
                 progress: Any = None) -> None:
        self.device = device
        #: bytes a sweep's stacked suffix passes may hold (None: the core's default)
        self.memory_budget = memory_budget
        #: makes ``progress(done, total)`` callbacks for sweeps (plugin.progress.Progress)
        self.progress = progress
        #: (this xdist worker's index, number of workers): workers that need the same sweep
        #: split it into pieces and each takes the pieces no other worker holds
        self.worker = worker
        self.seed = seed
        self.full_trace = full_trace
        self.cache = cache if cache is not None else EvalCache(None)
        self._objects: dict[Any, Any] = {}
        self._evals: dict[tuple[Any, ...], EvalResult] = {}
        self._means: dict[tuple[Any, ...], Any] = {}
        self._sweeps: dict[tuple[Any, ...], Sweep] = {}
        self._channels: dict[tuple[Any, ...], int] = {}
        self._replayable: set[int] = set()
        self._prefixes: Any = None
        self.dtype: str | None = None

    @property
    def prefixes(self) -> Any:
        """The torch core's :class:`~pytest_unitablate.core.scan.prefix.PrefixCache`: the
        unit order and the sweeps of one layer share its prefix pass (made on first use)."""
        if self._prefixes is None:
            from pytest_unitablate.core.scan.memory import DEFAULT_MEMORY_BUDGET
            from pytest_unitablate.core.scan.prefix import PrefixCache

            self._prefixes = PrefixCache(DEFAULT_MEMORY_BUDGET if self.memory_budget is None
                                         else self.memory_budget)
        return self._prefixes

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
                ranking: bool = False, reference: str | None = None) -> None:
        """A located error unless ``other`` saw the baseline's examples in its order."""
        from pytest_unitablate.core.evaluation import check_paired

        line = spec.ranking_data_line if ranking and spec.ranking_data else spec.data_line
        self._guard(spec, line, lambda: check_paired(baseline, other, what, reference))

    # --- evaluations --------------------------------------------------------------------

    def _guard(self, spec: Spec, line: int, fn: Callable[[], Any]) -> Any:
        """Run ``fn``; turn the core's user errors into located item problems."""
        try:
            return fn()
        except UnitAblateError as exc:
            raise ItemProblem(f"{spec.where(line)}: {exc}") from None

    def _evaluate(self, model: nn.Module, data: Any, output: int | str | None = None,
                  keep: Sequence[str] = ()) -> EvalResult:
        """``evaluate()``; with ``keep``, the pass also leaves those layers' prefix outputs
        in :attr:`prefixes` for the unit orders and sweeps that follow."""
        import torch

        from pytest_unitablate.core.evaluation import evaluate
        from pytest_unitablate.core.scan.prefix import evaluate_keeping

        if self.seed is not None:
            torch.manual_seed(self.seed)
        self._check_model(model)
        if keep:
            return evaluate_keeping(model, data, keep, self.prefixes, device=self.device,
                                    output=output)
        return evaluate(model, data, device=self.device, output=output)

    def _check_model(self, model: nn.Module) -> None:
        """The model must already be on the run's device; notes its dtype."""
        import torch

        from pytest_unitablate.core.evaluation import model_device

        if model_device(model) != torch.device(self.device):
            raise ItemProblem(
                f"the model is on {model_device(model)} but --unitablate-device is "
                f"{self.device}; move the model in its fixture (we never move it)"
            )
        if self.dtype is None:
            self.dtype = str(next(iter(model.parameters()), torch.empty(0)).dtype).replace(
                "torch.", "")

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
            identity = self.identity(spec, model, data)
            # the layers swept on this data: top_units ranks on the ranking data if any
            if ranking and spec.ranking_data:
                modes = {"top_units"}
            else:
                modes = {"any_unit", "every_unit", *(() if spec.ranking_data else ("top_units",))}
            swept = [c.layer for c in spec.checks if c.mode in modes]

            def run() -> dict[str, Any]:
                result: EvalResult = self._located(
                    spec, lambda: self._evaluate(model, data, spec.output, swept))
                if identity["data"] and result.fingerprint != identity["data"]:
                    self._paired(spec, _fingerprinted(identity["data"], result), result,
                                 "the baseline pass", ranking,
                                 reference="the pass that fingerprinted the data")
                return _eval_arrays(result)

            values = self.cache.get_or_compute({**identity, "what": "baseline"}, run)
            self._evals[key] = _eval_result(values)
        return self._evals[key]

    def _ablation_arg(self, spec: Spec, check: Check) -> str | float:
        ab = spec.ablation_for(check)
        return float(ab.value) if ab.kind == "constant" and ab.value is not None else ab.kind

    def _layer_means(self, spec: Spec, check: Check, model: nn.Module, data: Any) -> Any:
        import torch

        from pytest_unitablate.core.ablation import channel_means

        key = (id(model), id(data), check.layer, spec.channel_dim)
        if key not in self._means:
            def run() -> dict[str, Any]:
                means = self._guard(spec, check.layer_line, lambda: channel_means(
                    model, data, [check.layer], channel_dim=spec.channel_dim,
                    device=self.device))
                return {"means": means[check.layer].cpu().numpy()}

            identity = self.identity(spec, model, data)
            values = self.cache.get_or_compute(
                {**identity, "what": "means", "layer": check.layer}, run)
            self._means[key] = {check.layer: torch.from_numpy(values["means"])}
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
            baseline = self.baseline(spec, request)

            def run() -> dict[str, Any]:
                means = self._layer_means(spec, check, model, data) if arg == "mean" else None

                def forward() -> EvalResult:
                    with ablate(model, {check.layer: list(chosen)}, ablation=arg,
                                means=means, channel_dim=spec.channel_dim):
                        return self._evaluate(model, data, spec.output)

                result: EvalResult = self._located(spec, forward, check.layer_line)
                self._paired(spec, baseline, result,
                             f"the pass with {check.layer} units {list(chosen)} ablated")
                return _eval_arrays(result)

            values = self.cache.get_or_compute(
                {**self.identity(spec, model, data), "what": "ablated", "layer": check.layer,
                 "units": sorted(chosen), "ablation": arg}, run)
            self._evals[key] = _eval_result(values)
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
        model = self.model(spec, request)
        return {"data_sha256": self.baseline(spec, request).fingerprint[:16],
                "weights_sha256": _weights_sha256(model)[:16]}

    def identity(self, spec: Spec, model: nn.Module, data: Any) -> dict[str, Any]:
        """What determines every evaluation of ``model`` on ``data``: the disk cache's key.

        The weights and buffers (sha256 of the state dict), the structure (``repr``) and
        the source files of the model's own module classes, a fingerprint of the data's
        inputs and labels in order (one pass over the data, no model), the output key,
        device, dtype, seed and the torch and package versions. Computed once per (model,
        data) and only when the cache is on.
        """
        key = ("identity", id(model), id(data), spec.output, spec.channel_dim)
        if key in self._objects:
            result: dict[str, Any] = self._objects[key]
            return result
        self._check_model(model)
        if not self.cache.enabled:
            identity: dict[str, Any] = {"data": ""}
        else:
            import torch

            from pytest_unitablate import __version__
            from pytest_unitablate.core.data import data_fingerprint

            fingerprint = self._located(spec, lambda: data_fingerprint(data))
            identity = {
                "weights": _weights_sha256(model), "model": _structure_sha256(model),
                "data": fingerprint, "output": spec.output, "channel_dim": spec.channel_dim,
                "device": self.device, "dtype": self.dtype, "seed": self.seed,
                "torch": str(torch.__version__), "unitablate": __version__,
            }
        self._objects[key] = identity
        return identity

    def check_units(self, spec: Spec, check: Check, request: pytest.FixtureRequest) -> None:
        """Located error for a unit outside the layer's channels, before evaluating."""
        from pytest_unitablate.core.layers import check_units

        channels = self.channels(spec, check, request)
        self._guard(spec, check.line, lambda: check_units(check.layer, check.units, channels))

    # --- unit identity (identity: signature) ---------------------------------------------

    def signatures(self, spec: Spec, *, recording: bool = False) -> Signatures | None:
        """The spec's signatures sidecar (read once per spec), ``None`` if it has none.

        A sidecar that is missing, changed since recording or malformed is a located
        problem at the spec's ``signatures:`` line; while recording (``recording``), a
        sidecar the spec does not name yet is ignored (record mode will replace it).
        """
        from pytest_unitablate.spec.signatures import SignatureFileError, read_signatures

        key = ("signatures", str(spec.path))
        if key not in self._objects:
            path = spec.signatures_path()
            try:
                value = read_signatures(path, spec.signatures_sha256)
            except SignatureFileError as exc:
                if recording and not spec.signatures_sha256:
                    value = None
                else:
                    line = spec.signatures_line or min(
                        (c.identity_line for c in spec.checks if c.identity_line), default=0)
                    raise ItemProblem(f"{spec.where(line)}: {exc}") from None
            self._objects[key] = value
        result: Signatures | None = self._objects[key]
        return result

    def profiles(self, spec: Spec, check: Check, request: pytest.FixtureRequest) -> Any:
        """Class-damage profiles of every unit of the check's layer in the model under test
        (one forward and backward pass over the evaluation data; cached in memory and on
        disk): ``(units, classes)``."""
        model = self.model(spec, request)
        data = self.data(spec, request)
        key = ("profiles", id(model), id(data), check.layer, spec.channel_dim)
        if key not in self._objects:
            baseline = self.baseline(spec, request)

            def run() -> dict[str, Any]:
                from pytest_unitablate.core.identity import damage_profiles

                if self.seed is not None:
                    import torch

                    torch.manual_seed(self.seed)
                return {"profiles": self._located(spec, lambda: damage_profiles(
                    model, data, check.layer, num_classes=baseline.num_classes,
                    channel_dim=spec.channel_dim, device=self.device, output=spec.output),
                    check.layer_line)}

            values = self.cache.get_or_compute(
                {**self.identity(spec, model, data), "what": "profiles",
                 "layer": check.layer}, run)
            self._objects[key] = values["profiles"]
        return self._objects[key]

    def match(self, spec: Spec, check: Check, request: pytest.FixtureRequest
              ) -> dict[int, Match]:
        """Every recorded unit of the check's layer matched one-to-one to a unit of the
        model under test (Hungarian method on cosine similarity of profiles; cached)."""
        from pytest_unitablate.core.identity import match_units

        signatures = self.signatures(spec)
        assert signatures is not None
        model = self.model(spec, request)
        key = ("match", id(model), str(spec.path), check.layer)
        if key not in self._objects:
            recorded = signatures.units(check.layer)
            profiles = self.profiles(spec, check, request)
            line = spec.signatures_line or check.identity_line
            self._objects[key] = self._guard(spec, line,
                                             lambda: match_units(recorded, profiles))
        result: dict[int, Match] = self._objects[key]
        return result

    def sweep(self, spec: Spec, check: Check, request: pytest.FixtureRequest,
              ranking: bool = False, units: Sequence[int] | None = None) -> Sweep:
        """Units of the layer (default: all) ablated alone, one prediction per example each.

        The scan engine is :func:`pytest_unitablate.core.scan.scan`; the result names the
        engine that ran and why a faster one was refused. Cached in memory and on disk.
        """
        import numpy as np

        model = self.model(spec, request)
        data = self.data(spec, request, ranking)
        arg = self._ablation_arg(spec, check)
        channels = self.channels(spec, check, request)
        chosen = tuple(range(channels)) if units is None else tuple(units)
        key = (id(model), id(data), check.layer, arg, spec.channel_dim, chosen)
        if key in self._sweeps:
            return self._sweeps[key]
        baseline = self.baseline(spec, request, ranking)
        identity = self.identity(spec, model, data)

        def piece(units: tuple[int, ...]) -> tuple[dict[str, Any], Callable[[], Any]]:
            def run() -> dict[str, Any]:
                means = self._layer_means(spec, check, model, data) if arg == "mean" \
                    else None

                def scan_layer() -> Any:
                    import torch

                    from pytest_unitablate.core.scan import scan

                    if self.seed is not None:
                        torch.manual_seed(self.seed)
                    label = f"{spec.path.name} {check.layer}" + (
                        f" ({len(units)} of {channels} units)" if len(units) < channels
                        else "")
                    lines = self.progress.for_sweep(label, len(units) * baseline.n) \
                        if self.progress else None
                    return scan(model, data, check.layer, units=units, ablation=arg,
                                means=means, channel_dim=spec.channel_dim,
                                device=self.device, output=spec.output,
                                memory_budget=self.memory_budget,
                                progress=lines if lines is not None else False,
                                prefix_cache=self.prefixes)

                result = self._located(spec, scan_layer, check.layer_line)
                self._paired(spec, baseline, result.baseline, f"the sweep of {check.layer}",
                             ranking)
                return {"predictions": np.asarray(result.predictions),
                        "method": result.method, "reason": result.reason,
                        "plan": result.plan}

            key = {**identity, "what": "sweep", "layer": check.layer, "units": list(units),
                   "ablation": arg}
            return key, run

        pieces = self._pieces(chosen)
        found: dict[int, dict[str, Any]] = {}
        if len(pieces) > 1:  # first the pieces no other worker is computing
            first = self.worker[0] * len(pieces) // self.worker[1]
            for i in [*range(first, len(pieces)), *range(first)]:
                values = self.cache.try_get_or_compute(*piece(pieces[i]))
                if values is not None:
                    found[i] = values
        for i, units_i in enumerate(pieces):  # then wait for the others' pieces
            if i not in found:
                found[i] = self.cache.get_or_compute(*piece(units_i))
        parts = [found[i] for i in range(len(pieces))]
        methods = sorted({str(v["method"]) for v in parts})
        sweep = Sweep(units=chosen,
                      predictions=np.concatenate([v["predictions"] for v in parts]),
                      labels=baseline.labels, baseline=baseline, method="+".join(methods),
                      reason=str(parts[0]["reason"]), plan=str(parts[0].get("plan", "")))
        self._sweeps[key] = sweep
        return sweep

    def _pieces(self, units: tuple[int, ...]) -> list[tuple[int, ...]]:
        """``units`` cut for sharing between xdist workers: one piece when alone (or with
        the cache off), else pieces of at least 8 units, about two per worker."""
        workers = self.worker[1]
        if workers <= 1 or not self.cache.enabled or len(units) <= 8:
            return [units]
        size = max(8, -(-len(units) // (2 * workers)))
        return [units[i:i + size] for i in range(0, len(units), size)]

    def unit_order(self, spec: Spec, check: Check, request: pytest.FixtureRequest,
                   target: int | None, damaging_first: bool) -> tuple[tuple[int, ...], str]:
        """The layer's units, most (or least) damaging first by a first-order estimate on
        the evaluation data, and how the order was made (cached in memory and on disk).

        A model autograd cannot differentiate gets index order, said in the second value.
        """
        model = self.model(spec, request)
        data = self.data(spec, request)
        arg = self._ablation_arg(spec, check)
        channels = self.channels(spec, check, request)
        key = ("order", id(model), id(data), check.layer, arg, target)
        if key not in self._objects:
            def run() -> dict[str, Any]:
                import numpy as np

                from pytest_unitablate.core.unit_order import estimated_damage

                means = self._layer_means(spec, check, model, data) if arg == "mean" else None
                try:
                    damage = estimated_damage(
                        model, data, check.layer, target=target, ablation=arg, means=means,
                        channel_dim=spec.channel_dim, device=self.device, output=spec.output,
                        prefix_cache=self.prefixes)
                    how = "a first-order estimate of each unit's damage"
                except Exception as exc:  # not differentiable: index order, still exact
                    damage = np.zeros(channels)
                    how = f"unit index (no gradient estimate: {type(exc).__name__}: {exc})"
                if len(damage) != channels:
                    damage, how = np.zeros(channels), "unit index"
                return {"damage": np.asarray(damage, dtype=np.float64), "how": how}

            self._objects[key] = self.cache.get_or_compute(
                {**self.identity(spec, model, data), "what": "order", "layer": check.layer,
                 "ablation": arg, "target": target}, run)
        values = self._objects[key]
        damage = [float(d) for d in values["damage"]]
        sign = -1.0 if damaging_first else 1.0
        order = sorted(range(channels), key=lambda u: (sign * damage[u], u))
        return tuple(order), str(values["how"])

    def sweep_in_order(self, spec: Spec, check: Check, request: pytest.FixtureRequest,
                       order: Sequence[int], decided: Callable[[Sweep], bool],
                       first: int = 1, growth: int = 4) -> Sweep:
        """Units ablated alone in ``order``, in chunks of growing size (``first``, then
        ``growth`` times as many, ...), until ``decided`` says the outcome is fixed or
        every unit ran.

        One unit first: it often decides alone (the most damaging unit meets an
        ``any_unit`` bound, or breaks an ``every_unit`` one). Growing by 4 rather than 2
        keeps a layer that needs every unit to a few scans (each pays one prefix pass).
        The chunks depend only on ``order``, so two checks of one layer that order its
        units alike share every chunk through the caches.

        The result holds only the units evaluated, in ``order``, and does not depend on
        what ran before: a full sweep already made is read chunk by chunk, so the stopping
        point and the deciding unit are the same in a serial run, under xdist and in any
        item order. With the closed-form engine the whole layer is swept at once (one pass).
        """
        model = self.model(spec, request)
        data = self.data(spec, request)
        full = (id(model), id(data), check.layer, self._ablation_arg(spec, check),
                spec.channel_dim, tuple(range(self.channels(spec, check, request))))
        parts: list[Sweep] = []
        start, size = 0, first
        while start < len(order):
            chunk = tuple(order[start:start + size])
            if full in self._sweeps:  # already swept: read the chunk out of it
                part = _select(self._sweeps[full], chunk)
            else:
                part = self.sweep(spec, check, request, units=chunk)
                if part.method == "closed_form" and start + size < len(order):
                    self.sweep(spec, check, request)  # the whole layer costs one pass
                    part = _select(self._sweeps[full], chunk)
            parts.append(part)
            merged = _merge(parts)
            if decided(merged):
                return merged
            start, size = start + size, size * growth
        return _merge(parts)


def _select(sweep: Sweep, units: Sequence[int]) -> Sweep:
    """The rows of ``sweep`` for ``units`` (each unit alone), in that order."""
    rows = [sweep.units.index(u) for u in units]
    return Sweep(units=tuple(units), predictions=sweep.predictions[rows],
                 labels=sweep.labels, baseline=sweep.baseline, method=sweep.method,
                 reason=sweep.reason, plan=sweep.plan)


def _merge(parts: Sequence[Sweep]) -> Sweep:
    """Partial sweeps of one layer as one (units in evaluation order)."""
    import numpy as np

    if len(parts) == 1:
        return parts[0]
    methods = sorted({p.method for p in parts})
    return Sweep(units=tuple(u for p in parts for u in p.units),
                 predictions=np.concatenate([p.predictions for p in parts]),
                 labels=parts[0].labels, baseline=parts[0].baseline,
                 method="+".join(methods), reason=parts[-1].reason, plan=parts[-1].plan)


def _eval_arrays(result: EvalResult) -> dict[str, Any]:
    """An :class:`EvalResult` as cache values."""
    return {"labels": result.labels, "predictions": result.predictions,
            "num_classes": result.num_classes, "fingerprint": result.fingerprint}


def _eval_result(values: dict[str, Any]) -> EvalResult:
    from pytest_unitablate.core.evaluation import EvalResult

    return EvalResult(labels=values["labels"], predictions=values["predictions"],
                      num_classes=int(values["num_classes"]),
                      fingerprint=str(values["fingerprint"]))


def _fingerprinted(fingerprint: str, like: EvalResult) -> EvalResult:
    """A stand-in result with ``fingerprint`` (for the pairing message)."""
    from dataclasses import replace

    return replace(like, fingerprint=fingerprint)


def _weights_sha256(model: nn.Module) -> str:
    """sha256 over the names and values of every parameter and buffer."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        value = tensor.detach().cpu().contiguous()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16: hash the raw bits
            value = value.view(torch.int16)
        elif value.is_quantized:
            value = value.int_repr()
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def _structure_sha256(model: nn.Module) -> str:
    """sha256 of the model's ``repr`` and of the source files of its own module classes
    (classes outside torch): editing a ``forward`` changes it, so does a new stride."""
    import hashlib
    import inspect

    digest = hashlib.sha256(repr(model).encode())
    files = set()
    for module in model.modules():
        cls = type(module)
        if not cls.__module__.startswith("torch."):
            try:
                files.add(inspect.getsourcefile(cls) or "")
            except TypeError:  # a class defined in the interpreter: no file
                files.add("")
    for path in sorted(files):
        digest.update(path.encode())
        if path:
            with contextlib.suppress(OSError):
                digest.update(Path(path).read_bytes())
    return digest.hexdigest()
