"""The engine: evaluates spec items for a model and data, with no pytest in it.

One :class:`Engine` per process (the pytest plugin keeps one per session and xdist
worker; :func:`pytest_unitablate.run_spec` makes one per call). It binds a spec's
references to objects (:meth:`Engine.bind`), plans and memoises every evaluation the items
need (:mod:`.evaluations`, :mod:`.sweeps`, :mod:`.matching`, the store it is handed), and
judges items with the torch-free verdicts (:meth:`Engine.run_item`).

Example::

    engine = Engine(EngineSettings(device="cpu", seed=0))
    subject = engine.bind(spec, mapping_lookup({"digits_resnet": model,
                                                "digits_test": loader}))
    for key in item_ids(spec):
        result = engine.run_item(spec, subject, key)   # ItemResult: status, message, record
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pytest_unitablate.core.data import seeded_passes
from pytest_unitablate.core.evaluation import EvalResult
from pytest_unitablate.engine.evaluations import Evaluations
from pytest_unitablate.engine.judge import ItemResult, judge_item
from pytest_unitablate.engine.matching import Matching
from pytest_unitablate.engine.named import NamedChecks
from pytest_unitablate.engine.refs import Lookup, References, Subject
from pytest_unitablate.engine.settings import EngineSettings
from pytest_unitablate.engine.store import NullStore, Store
from pytest_unitablate.engine.sweeps import Sweeps
from pytest_unitablate.spec.ids import ItemKey
from pytest_unitablate.spec.model import Check, Spec
from pytest_unitablate.verdicts.calibration import CalibrationFile


class Engine:
    """Every evaluation of a process, computed once, and the items judged from them."""

    def __init__(self, settings: EngineSettings | None = None,
                 store: Store | None = None) -> None:
        self.settings = settings if settings is not None else EngineSettings()
        self.store: Store = store if store is not None else NullStore()
        self.references = References()
        self.evals = Evaluations(self.settings, self.store)
        self.sweeps = Sweeps(self.evals)
        self.matching = Matching(self.evals)
        self.named = NamedChecks(self.evals, self.matching)
        #: what was said once per spec or layer (warnings are not repeated per item)
        self.provenance_checked: set[str] = set()
        self.chance_noted: set[str] = set()
        self.engine_warned: set[tuple[str, str]] = set()
        self.signature_data_warned: set[str] = set()
        self.calibrations: dict[str, CalibrationFile] = {}

    @property
    def dtype(self) -> str | None:
        """The model's dtype, once a model was evaluated."""
        return self.evals.dtype

    def bind(self, spec: Spec, lookup: Lookup | None) -> Subject:
        """Resolve the spec's ``model:``, ``data:``, ``ranking_data:`` and ``reference:``
        (the spec's and the checks') and check them.

        ``lookup`` gives names (fixtures) their objects; ``package.module:callable``
        references resolve themselves. Raises a located
        :class:`~pytest_unitablate.errors.ItemProblem` for a reference that does not
        resolve, a model that is not a module, data that cannot replay the same examples.
        """
        __tracebackhide__ = True  # pytest shows a failing fixture from the fixture on
        where = str(spec.path)

        def resolve(ref: str, what: str, line: int) -> object:
            __tracebackhide__ = True
            return self.references.resolve(ref, what, line, where=where, lookup=lookup)

        model = resolve(spec.model, "model", spec.model_line)

        def source(ref: str | None, groups: tuple[tuple[str, str], ...], what: str,
                   line: int) -> object:
            if not groups:
                return resolve(ref, what, line) if ref else None
            from pytest_unitablate.core.data import GroupedData

            parts = [(name, resolve(part, f"{what} group {name!r}", line))
                     for name, part in groups]
            return self.evals.guard(spec, line, lambda: GroupedData(parts))

        data = source(spec.data, spec.groups, "data", spec.data_line)
        ranking = source(spec.ranking_data, spec.ranking_groups, "ranking_data",
                         spec.ranking_data_line)
        references = {ref: resolve(ref, "reference", line) for ref, line in sorted(
            {spec.reference_for(c) for c in spec.checks if spec.reference_for(c)[0]})
            if ref is not None}
        subject = Subject(model=model, data=data, ranking=ranking, references=references)
        self.evals.check_subject(spec, subject)
        return subject

    def ablated(self, spec: Spec, subject: Subject, check: Check,
                units: Sequence[int] | None = None) -> EvalResult:
        """The evaluation with ``units`` (default: the check's) of the check's layer
        ablated together: with the layer's other named checks in one scan
        (:mod:`.named`), or its own forward passes with ``plain_passes``."""
        chosen = tuple(check.units if units is None else units)
        if self.settings.plain_passes:
            return self.evals.ablated(spec, subject, check, chosen)
        return self.named.ablated(spec, subject, check, chosen)

    def run_item(self, spec: Spec, subject: Subject, key: ItemKey) -> ItemResult:
        """Measure and judge one item (:func:`~pytest_unitablate.engine.judge.judge_item`).

        Every pass over the data starts from ``torch.manual_seed(seed)``
        (:func:`~pytest_unitablate.core.data.seeded_passes`), so data with seeded random
        augmentation replays the same examples in every pass and every engine."""
        position = spec.position_for(key.check)
        if position is not None:  # the model judged on its next-token logits there
            subject = subject.at(position, spec.output)
            spec = replace(spec, output=None)
        with seeded_passes(self.settings.seed):
            return judge_item(self, spec, subject, key)


__all__ = ["Engine"]
