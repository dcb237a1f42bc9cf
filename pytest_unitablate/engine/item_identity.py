"""``identity: signature``: which units of the model under test stand for the recorded ones.

Example::

    class Run(ItemIdentity): ...
    units = Run(engine, spec, subject, key)._identity_units(notes)  # None: recorded indices
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_unitablate.core.identity import dead_units
from pytest_unitablate.engine.results import Miss
from pytest_unitablate.errors import ItemProblem
from pytest_unitablate.verdicts.failure import no_match_text
from pytest_unitablate.verdicts.measure import drop_text

if TYPE_CHECKING:
    pass

from pytest_unitablate.engine.item_state import ItemState


class ItemIdentity(ItemState):
    """The signature matching of an item (:meth:`_identity_units`)."""

    def _identity_units(self, notes: list[str]) -> list[int] | None:
        """For ``identity: signature``: the units of the model under test that match the
        check's recorded units (one-to-one across the layer's recorded units), or ``None``
        (this run uses the indices: record mode is recording their signatures now).

        A recorded unit whose best possible partner is below ``min_similarity`` fails the
        item: the unit the check protects is gone.
        """
        engine, spec, subject, check = self.engine, self.spec, self.subject, self.key.check
        recording = self.settings.record_mode != "none"
        signatures = engine.matching.signatures(spec, recording=recording)
        recorded = signatures.units(check.layer) if signatures is not None else {}
        missing = [u for u in check.units if u not in recorded]
        self.record.update({"identity": "signature", "min_similarity": check.min_similarity,
                            "recorded_units": list(check.units)})
        if missing:
            if not recording:
                raise ItemProblem(
                    f"{spec.where(check.identity_line)}: identity: signature, but no "
                    f"signature of {check.layer} unit(s) {missing} is recorded in "
                    f"{spec.signatures_path()}; record it (from the reference model) with: "
                    f"{self.rerun('new')}")
            engine.evals.check_units(spec, subject, check)
            profiles = engine.matching.profiles(spec, subject, check)
            self.record.update({
                "signature": {str(u): [float(v) for v in profiles[u]] for u in check.units},
                "signatures_file": str(spec.signatures_path()),
                "signature_classes": list(spec.classes) if spec.classes else None,
                "signature_data_sha256": engine.evals.baseline(spec, subject).fingerprint})
            notes.append(f"identity: signature: no signature recorded yet for unit(s) "
                         f"{missing}; this run takes the indices as they are and record mode "
                         f"writes the signatures")
            return None
        matches = engine.matching.match(spec, subject, check)
        fingerprint = engine.evals.baseline(spec, subject).fingerprint
        if signatures is not None and signatures.data_sha256 and \
                signatures.data_sha256 != fingerprint and \
                str(spec.path) not in engine.signature_data_warned:
            engine.signature_data_warned.add(str(spec.path))
            self.warn(f"{spec.where(spec.signatures_line)}: the signatures were recorded on "
                      f"other evaluation data (fingerprint {signatures.data_sha256[:12]}...); "
                      f"profiles are class averages, so matching still works, but re-record "
                      f"to silence this")
        mapped = [matches[u] for u in check.units]
        profiles = engine.matching.profiles(spec, subject, check)
        # every recorded unit of the layer whose own index is dead (and that matching moved)
        dead_all = {u: share for u, share in dead_units(recorded, profiles).items()
                    if u in matches and matches[u].unit != u}
        # a retrain that renumbered the units can put an unused unit at a recorded index:
        # then matching is trusted (another recorded unit of the layer moved, alive). A
        # recorded unit that moved because its own index is dead (pruned) is no evidence
        # of renumbering: two pruned units do not excuse each other.
        renumbered = any(m.unit is not None and m.unit != r and r not in dead_all
                         for r, m in matches.items())
        dead = {u: dead_all[u] for u in check.units if u in dead_all}
        self.dead = {} if renumbered else dead
        self.record.update({
            "dead_units": sorted(self.dead) or None,
            "recorded_drop": self.key.constraint.measured,
            "matched_units": [m.unit for m in mapped],
            "similarity": [round(m.similarity, 4) if m.unit is not None else None
                           for m in mapped],
            "mapping": "; ".join(m.describe() for m in mapped)})
        left = [int(m.unit) for m in mapped if m.unit is not None]
        if self.dead and left:  # measured on the units matching would take, then failed
            return left
        gone = [m for m in mapped if m.unit is None or m.similarity < check.min_similarity]
        if gone:
            raise Miss(no_match_text(
                spec.where(check.identity_line or check.line), self.key.id, check.layer,
                gone, check.min_similarity, matches, self.noun))
        notes.append("identity: signature: " + "; ".join(m.describe() for m in mapped))
        was = self.key.constraint.measured
        if was is not None:
            notes.append(f"drop when recorded (recorded {self.noun}s "
                         f"{', '.join(map(str, check.units))}): "
                         f"{drop_text(self.key.constraint.kind.replace('max', 'min'), was)}")
        return left


__all__ = ["ItemIdentity"]
