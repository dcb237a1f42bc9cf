"""The typed model of a spec file, format version 1 (torch-free).

The loader (:mod:`pytest_unitablate.spec.loader`) turns YAML into these frozen dataclasses;
everything downstream (collection, ids, reports, record mode) reads only these.
Every node keeps the 1-based ``line`` of the YAML key that introduced it, so any message
can say ``path:line:``.

Thresholds are stored as fractions: ``20%`` in YAML is ``0.20`` here.

Example::

    >>> c = Constraint(kind="min_drop", threshold=0.2, line=7)
    >>> c.describe()
    'drop >= 20.0 pp'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

FORMAT_VERSION = 1

#: The reserved target name for overall (all-class) accuracy.
OVERALL = "overall"

ConstraintKind = Literal["min_drop", "max_drop", "min_relative_drop", "max_relative_drop",
                         "min_logprob_drop", "max_logprob_drop", "min_accuracy"]
CONSTRAINT_KINDS: tuple[ConstraintKind, ...] = (
    "min_drop",
    "max_drop",
    "min_relative_drop",
    "max_relative_drop",
    "min_logprob_drop",
    "max_logprob_drop",
    "min_accuracy",
)
#: The constraint kinds on the log-probability of the true class: plain numbers in nats.
LOGPROB_KINDS: tuple[ConstraintKind, ...] = ("min_logprob_drop", "max_logprob_drop")
#: The constraint kinds on the target's own accuracy (no ablation): a fine-tune that forgot
#: a class shows a larger drop than the reference, not a smaller one.
ACCURACY_KINDS: tuple[ConstraintKind, ...] = ("min_accuracy",)

AblationKind = Literal["zero", "mean", "constant", "resample"]

#: How a check chooses its units.
CheckMode = Literal["units", "any_unit", "every_unit", "top_units"]

#: What a named unit is: its index (the default), or its recorded signature.
IdentityKind = Literal["index", "signature"]

#: What the units of a layer are: channels of its output, or attention heads.
UnitKind = Literal["channel", "head"]

#: Default ``min_similarity`` of ``identity: signature`` (cosine of class-damage profiles;
#: how it was chosen on the demo models: ``docs/identity.md``).
DEFAULT_MIN_SIMILARITY = 0.75


@dataclass(frozen=True)
class Ablation:
    """What an ablated unit is replaced by: 0, its mean over the reference data, a
    constant, or (``resample``) its value on another example of the reference data."""

    kind: AblationKind = "zero"
    value: float | None = None  # only for kind == "constant"
    line: int = 0
    draws: int = 1  # only for kind == "resample": the measure is averaged over the draws

    def label(self) -> str:
        """Short, id-safe label: ``zero``, ``mean``, ``const0.5``, ``resample`` or
        ``resample4`` (four draws)."""
        if self.kind == "constant":
            return f"const{self.value:g}"
        if self.kind == "resample" and self.draws > 1:
            return f"resample{self.draws}"
        return self.kind


@dataclass(frozen=True)
class Constraint:
    """One threshold on one target; each constraint becomes one pytest item."""

    kind: ConstraintKind
    #: fraction: 0.2 means 20 pp (or 20 % relative); nats for the ``*_logprob_drop``
    #: kinds; None: not recorded yet (``null``)
    threshold: float | None
    line: int = 0
    #: Optional warn band (fraction): pass but warn when within this distance of failing.
    warn_margin: float | None = None
    #: Optional: require the bound of this two-sided confidence level, not the point estimate.
    confidence: float | None = None
    #: Recorded measurement kept beside the threshold by record mode (fraction), if any.
    measured: float | None = None

    def describe(self) -> str:
        """Human text of the requirement, e.g. ``drop >= 20.0 pp``."""
        if self.threshold is None:
            return f"{self.kind} (not recorded yet)"
        pct = self.threshold * 100
        if self.kind in LOGPROB_KINDS:
            op = ">=" if self.kind.startswith("min") else "<="
            return f"log-prob drop {op} {self.threshold:.3f} nats"
        return {
            "min_accuracy": f"accuracy >= {pct:.1f}%",
            "min_drop": f"drop >= {pct:.1f} pp",
            "max_drop": f"drop <= {pct:.1f} pp",
            "min_relative_drop": f"relative drop >= {pct:.1f}%",
            "max_relative_drop": f"relative drop <= {pct:.1f}%",
        }[self.kind]


@dataclass(frozen=True)
class Expectation:
    """The constraints on one target (a class or ``overall``) of a check."""

    target: str | int  # class name, class index, or OVERALL
    constraints: tuple[Constraint, ...]
    line: int = 0


@dataclass(frozen=True)
class Mark:
    """A pytest mark attached to a check (``marks: [xfail]`` or ``{skipif: {reason: ..}}``)."""

    name: str
    args: tuple[object, ...] = ()
    kwargs: tuple[tuple[str, object], ...] = ()
    line: int = 0


@dataclass(frozen=True)
class Check:
    """One entry of ``checks:``.

    ``mode`` says how units are chosen:

    - ``units``: the listed ``units`` are ablated together;
    - ``any_unit``: at least ``at_least`` single units of the layer meet the expectation;
    - ``every_unit``: every single unit of the layer meets it;
    - ``top_units``: the ``top_units`` units most damaging to ``top_class`` are ablated together.
    """

    layer: str
    mode: CheckMode
    expectations: tuple[Expectation, ...]
    line: int = 0
    layer_line: int = 0
    units: tuple[int, ...] = ()
    at_least: int = 1
    top_units: int | None = None
    top_class: str | int | None = None
    ablation: Ablation | None = None  # None: the spec's default
    marks: tuple[Mark, ...] = ()
    name: str | None = None  # optional user label, used in the test id if given
    index: int = 0  # position in ``checks:`` (0-based), used by record mode
    #: ``index``: unit ``u`` is channel ``u``; ``signature``: the unit of the layer whose
    #: recorded signature matches (``units:`` then names the units of the reference model)
    identity: IdentityKind = "index"
    min_similarity: float = DEFAULT_MIN_SIMILARITY
    identity_line: int = 0
    #: the dimension of the layer's output that holds the units (None: the spec's)
    channel_dim: int | None = None
    #: what the units are (None: the spec's)
    unit: UnitKind | None = None
    #: for unit: head, the number of heads where the module does not say it
    num_heads: int | None = None
    #: the next-token position judged for (N, T, V) logits (None: the spec's)
    position: int | str | None = None
    #: the data mean and resample ablation take their values from (None: the spec's)
    reference: str | None = None
    reference_line: int = 0

    @property
    def mode_key(self) -> str | None:
        """The YAML key holding ``expect`` for layer-wide modes; None for named units."""
        return None if self.mode == "units" else self.mode


@dataclass(frozen=True)
class Spec:
    """A whole spec file."""

    path: Path
    version: int
    model: str  # fixture name, or "package.module:callable"
    data: str  # fixture name, or "package.module:callable"
    checks: tuple[Check, ...]
    model_line: int = 0
    data_line: int = 0
    classes: tuple[str, ...] | None = None
    classes_line: int = 0
    ablation: Ablation = field(default_factory=Ablation)
    #: Optional separate split used to rank units for ``top_units`` checks.
    ranking_data: str | None = None
    ranking_data_line: int = 0
    #: Channel dimension of the layers' outputs; None when the spec does not say (then 1,
    #: for N,C,H,W and N,C outputs only: other shapes must say which dimension)
    channel_dim: int | None = None
    #: What the units are unless a check says otherwise: channels or attention heads.
    unit: UnitKind = "channel"
    #: For unit: head checks, the number of heads where the model does not say it.
    num_heads: int | None = None
    #: For a language model's (N, T, V) logits: the position judged (an index or "last").
    position: int | str | None = None
    position_line: int = 0
    #: ``data:`` as named groups: (name, reference) pairs, each group a target.
    groups: tuple[tuple[str, str], ...] = ()
    #: ``ranking_data:`` as named groups (the same names), for ``top_units`` of a group.
    ranking_groups: tuple[tuple[str, str], ...] = ()
    #: Minimum number of evaluation examples a class target needs.
    min_examples: int = 1
    #: Record-mode provenance block (torch version, device, dtype, hashes), if present.
    provenance: tuple[tuple[str, str], ...] = ()
    #: Where the logits are in the model's output: None (the output is the logits tensor),
    #: an index into a tuple/list output, or a key of a dict / attribute of a ModelOutput.
    output: int | str | None = None
    output_line: int = 0
    #: The signatures sidecar (path relative to the spec file) and its recorded sha256.
    signatures: str | None = None
    signatures_sha256: str | None = None
    signatures_line: int = 0
    #: the data ``mean`` and ``resample`` ablation take their values from (``None``: the
    #: evaluation data); a check may name its own
    reference: str | None = None
    reference_line: int = 0

    def reference_for(self, check: Check) -> tuple[str | None, int]:
        """The reference data a check's ablation takes values from, and its line."""
        if check.reference is not None:
            return check.reference, check.reference_line
        return self.reference, self.reference_line

    def signatures_path(self) -> Path:
        """Where the signatures sidecar is (or will be written): next to the spec file,
        ``<spec stem>.signatures.json`` unless ``signatures: {file: ...}`` says otherwise."""
        name = self.signatures or f"{self.path.stem}.signatures.json"
        return self.path.parent / name

    def channel_dim_for(self, check: Check) -> int | None:
        """The channel dimension a check states (its own, or the spec's), or ``None``."""
        return check.channel_dim if check.channel_dim is not None else self.channel_dim

    def position_for(self, check: Check) -> int | str | None:
        """The next-token position a check judges (its own, or the spec's), or ``None``."""
        return check.position if check.position is not None else self.position

    @property
    def group_names(self) -> tuple[str, ...]:
        """The names of ``data:``'s groups (empty for one data source)."""
        return tuple(name for name, _ in self.groups)

    def is_group(self, target: str | int | None) -> bool:
        """Whether ``target`` names a data group."""
        return isinstance(target, str) and target in self.group_names

    def num_heads_for(self, check: Check) -> int | None:
        """The head count a head check states (its own, or the spec's), or ``None``."""
        return check.num_heads if check.num_heads is not None else self.num_heads

    def unit_for(self, check: Check) -> UnitKind:
        """What the check's units are: its own ``unit:``, or the spec's."""
        return check.unit if check.unit is not None else self.unit

    def ablation_for(self, check: Check) -> Ablation:
        """The ablation a check uses: its own override or the spec's default."""
        return check.ablation if check.ablation is not None else self.ablation

    def where(self, line: int) -> str:
        """``path:line`` of a spec line, the prefix of every located message."""
        return f"{self.path}:{line}"

    def class_index(self, target: str | int) -> int | None:
        """The class index of an expectation target (``None`` for ``overall``)."""
        if target == OVERALL:
            return None
        if isinstance(target, int):
            return target
        if self.is_group(target):
            raise KeyError(f"{target!r} is a data group, not a class")
        if self.classes is None or target not in self.classes:
            raise KeyError(f"class {target!r} is not in the spec's classes")
        return self.classes.index(target)

    def target_name(self, target: str | int | None) -> str:
        """A target as users wrote it: ``overall``, a class name, or an index."""
        if target is None:
            return "?"
        if isinstance(target, int) and self.classes is not None and target < len(self.classes):
            return self.classes[target]
        return str(target)

