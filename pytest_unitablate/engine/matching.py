"""Unit identity for ``identity: signature``: the recorded signatures, the model's profiles,
and the one-to-one matching between them.

Example::

    units = Matching(evals)
    recorded = units.signatures(spec)                  # the sidecar, or None
    matches = units.match(spec, subject, check)        # recorded unit -> Match
    units.made(spec, subject, check)                   # the same, or None if not made yet
"""

from __future__ import annotations

from typing import Any

from pytest_unitablate.core.identity import Match, match_units
from pytest_unitablate.engine.evaluations import Evaluations
from pytest_unitablate.engine.refs import Subject
from pytest_unitablate.errors import ItemProblem
from pytest_unitablate.spec.model import Check, Spec
from pytest_unitablate.spec.signatures import SignatureFileError, Signatures, read_signatures


class Matching:
    """Signatures sidecars (read once per spec), profiles and matches (once per layer)."""

    def __init__(self, evals: Evaluations) -> None:
        self.evals = evals
        self._signatures: dict[str, Signatures | None] = {}  # per spec file
        self._profiles: dict[tuple[Any, ...], Any] = {}  # per model, data and layer units
        self._matches: dict[tuple[Any, ...], dict[int, Match]] = {}  # per model, spec, layer

    def signatures(self, spec: Spec, *, recording: bool = False) -> Signatures | None:
        """The spec's signatures sidecar (read once per spec), ``None`` if it has none.

        A sidecar that is missing, changed since recording or malformed is a located
        problem at the spec's ``signatures:`` line; while recording (``recording``), a
        sidecar the spec does not name yet is ignored (record mode will replace it).
        """
        key = str(spec.path)
        if key not in self._signatures:
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
            self._signatures[key] = value
        return self._signatures[key]

    def profiles(self, spec: Spec, subject: Subject, check: Check) -> Any:
        """Class-damage profiles of every unit of the check's layer in the model under test
        (cached in memory and in the store): ``(units, classes)``. For channels one forward
        and backward pass over the evaluation data (a first-order estimate); for heads one
        ablated pass per head (measured)."""
        ev = self.evals
        model, data = subject.model, subject.data
        units = ev.units(spec, subject, check)
        key = (id(model), id(data), units.memo)
        if key not in self._profiles:
            baseline = ev.baseline(spec, subject)

            def compute() -> Any:
                # looked up at call time: a test stands in for another CPU by wrapping it
                from pytest_unitablate.core import identity

                if units.unit == "head":
                    return identity.head_profiles(
                        model, data, check.layer, num_classes=baseline.num_classes,
                        num_heads=units.num_heads, device=ev.device, output=spec.output)
                return identity.damage_profiles(
                    model, data, check.layer, num_classes=baseline.num_classes,
                    channel_dim=units.channel_dim, device=ev.device, output=spec.output)

            def run() -> dict[str, Any]:
                ev.seeded()
                return {"profiles": ev.located(spec, compute, check.layer_line)}

            values = ev.store.get_or_compute(
                {**ev.identity(spec, model, data), "what": "profiles", **units.key()}, run)
            self._profiles[key] = values["profiles"]
        return self._profiles[key]

    def match(self, spec: Spec, subject: Subject, check: Check) -> dict[int, Match]:
        """Every recorded unit of the check's layer matched one-to-one to a unit of the
        model under test (Hungarian method on cosine similarity of profiles; cached)."""
        signatures = self.signatures(spec)
        assert signatures is not None
        key = self._match_key(spec, subject, check)
        if key not in self._matches:
            recorded = signatures.units(check.layer)
            profiles = self.profiles(spec, subject, check)
            line = spec.signatures_line or check.identity_line
            self._matches[key] = self.evals.guard(
                spec, line, lambda: match_units(recorded, profiles))
        return self._matches[key]

    def made(self, spec: Spec, subject: Subject, check: Check) -> dict[int, Match] | None:
        """The match of the check's layer if :meth:`match` made it already, else ``None``
        (planning a layer's scan never makes one: its profile pass is the check's)."""
        return self._matches.get(self._match_key(spec, subject, check))

    @staticmethod
    def _match_key(spec: Spec, subject: Subject, check: Check) -> tuple[Any, ...]:
        return (id(subject.model), str(spec.path), check.layer)


__all__ = ["Matching"]
