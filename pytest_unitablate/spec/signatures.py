"""The signatures sidecar: what named units *are*, recorded next to the spec (torch-free).

A check with ``identity: signature`` protects the unit whose recorded signature it names,
wherever a retrain moved it (matching: :mod:`pytest_unitablate.core.identity`). A
signature has one number per class, too many for a readable spec on a real data set, so
record mode keeps them in a JSON sidecar next to the spec (``resnet.signatures.json`` for
``resnet.yaml``) and writes the sidecar's sha256 into the spec::

    signatures: {file: resnet.signatures.json, sha256: 5f0c...}

The hash ties the two together: a sidecar edited or swapped after recording is refused
(re-record instead). The sidecar is plain, sorted JSON, readable and diffable::

    {"unitablate_signatures": 1,
     "signature": "class-damage profile ...", "similarity": "cosine",
     "classes": ["zero", ...], "data_sha256": "...", "weights_sha256": "...",
     "layers": {"layer3.0": {"10": {"profile": [0.01, ..., 0.94, ...],
                                    "top_classes": ["seven", "one"]}}}}

``python -m pytest_unitablate signatures specs/resnet.signatures.json`` prints it as a table.

Example::

    >>> s = Signatures(layers={"conv5": {3: (0.0, 1.0)}}, classes=("a", "b"), data_sha256="d")
    >>> Signatures.from_text(s.to_text()).layers
    {'conv5': {3: (0.0, 1.0)}}
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_unitablate.atomic import atomic_write
from pytest_unitablate.errors import UnitAblateError

FORMAT = 1
#: Decimal places a recorded profile keeps. Profiles come from a backward pass, whose last
#: float digits differ across CPUs and thread counts (relative 1e-5 seen between an Intel
#: and an AMD machine); four decimals (steps of 1e-4, on values of about 0.001 to 0.5) make
#: a sidecar recorded on another machine equal to this one's but for a rare flip of the
#: last digit, and no such difference moves a cosine similarity measurably.
PROFILE_DECIMALS = 4
SIGNATURE_TEXT = ("class-damage profile: per class, the mean loss of the true class's "
                  "log-probability over that class's examples when the unit alone is zeroed "
                  "(a first-order estimate for a channel, measured for an attention head)")


class SignatureFileError(UnitAblateError):
    """The sidecar is missing, unreadable, or not the one the spec recorded."""


def sha256_text(text: str) -> str:
    """sha256 of a sidecar's text (UTF-8), as written into the spec."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rounded_profile(profile: Sequence[float]) -> list[float]:
    """A profile as the sidecar keeps it: :data:`PROFILE_DECIMALS` decimal places, no -0.0.

    >>> rounded_profile([0.374610123, -0.00498299, -0.00001])
    [0.3746, -0.005, 0.0]
    """
    return [round(float(v), PROFILE_DECIMALS) + 0.0 for v in profile]


def top_classes(profile: Sequence[float], classes: Sequence[str] | None, n: int = 2
                ) -> list[str]:
    """The ``n`` classes a profile depends on most (names where known), largest first.

    >>> top_classes([0.1, 0.9, 0.3], ["a", "b", "c"])
    ['b', 'c']
    """
    names = classes or ()
    order = sorted(range(len(profile)), key=lambda k: (-profile[k], k))[:n]
    return [names[k] if k < len(names) else str(k) for k in order]


@dataclass(frozen=True)
class Signatures:
    """Recorded signatures: layer -> unit index (in the reference model) -> profile."""

    layers: Mapping[str, Mapping[int, tuple[float, ...]]]
    classes: tuple[str, ...] | None = None
    #: fingerprint of the evaluation data the profiles were measured on (the baseline's)
    data_sha256: str = ""
    meta: Mapping[str, str] = field(default_factory=dict)

    def units(self, layer: str) -> dict[int, tuple[float, ...]]:
        """The recorded units of ``layer`` (empty if none)."""
        return dict(self.layers.get(layer, {}))

    def merged(self, other: Signatures) -> Signatures:
        """These signatures with ``other``'s added (``other`` wins on the same unit)."""
        layers = {name: dict(units) for name, units in self.layers.items()}
        for name, units in other.layers.items():
            layers.setdefault(name, {}).update(units)
        return Signatures(layers=layers, classes=other.classes or self.classes,
                          data_sha256=other.data_sha256 or self.data_sha256,
                          meta={**self.meta, **other.meta})

    def to_text(self) -> str:
        """Deterministic JSON: sorted keys, profiles rounded to :data:`PROFILE_DECIMALS`
        decimal places (see :func:`rounded_profile`)."""
        doc = {
            "unitablate_signatures": FORMAT,
            "signature": SIGNATURE_TEXT,
            "similarity": "cosine",
            "classes": list(self.classes) if self.classes is not None else None,
            "data_sha256": self.data_sha256,
            **{k: v for k, v in sorted(self.meta.items())},
            "layers": {
                layer: {str(u): {"profile": rounded_profile(profile),
                                 "top_classes": top_classes(rounded_profile(profile),
                                                            self.classes)}
                        for u, profile in sorted(units.items())}
                for layer, units in sorted(self.layers.items())},
        }
        text = json.dumps(doc, indent=1, sort_keys=True)
        # one line per list (profiles, class names): readable, and a diff shows one unit
        return re.sub(r"\[[^\[\]{}]*\]", lambda m: " ".join(m.group(0).split()), text) + "\n"

    @classmethod
    def from_text(cls, text: str, where: str = "the signatures file") -> Signatures:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SignatureFileError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("unitablate_signatures") != FORMAT:
            raise SignatureFileError(f"{where} is not a pytest-unitablate signatures file "
                                     f"(format {FORMAT})")
        try:
            layers = {str(layer): {int(u): tuple(float(v) for v in entry["profile"])
                                   for u, entry in units.items()}
                      for layer, units in doc["layers"].items()}
            classes = tuple(str(c) for c in doc["classes"]) if doc.get("classes") else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SignatureFileError(f"{where} is malformed: {type(exc).__name__}: {exc}"
                                     ) from None
        meta = {k: str(v) for k, v in doc.items() if k in ("weights_sha256", "torch_version")}
        return cls(layers=layers, classes=classes, data_sha256=str(doc.get("data_sha256", "")),
                   meta=meta)


def read_signatures(path: Path, expected_sha256: str | None) -> Signatures | None:
    """The sidecar at ``path``; ``None`` when it does not exist and the spec names no hash.

    Raises :class:`SignatureFileError` when the spec recorded a hash and the file is
    missing or differs from it (edited, swapped, or from another recording).
    """
    if not path.exists():
        if expected_sha256:
            raise SignatureFileError(
                f"the signatures file {path} recorded in the spec is missing")
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SignatureFileError(f"cannot read the signatures file {path}: {exc}") from None
    actual = sha256_text(text)
    if expected_sha256 and actual != expected_sha256:
        raise SignatureFileError(
            f"the signatures file {path} has sha256 {actual[:12]}..., not the "
            f"{expected_sha256[:12]}... the spec recorded: it changed after recording. "
            f"Restore it, or delete it and the spec's signatures: entry and record again")
    if not expected_sha256:
        raise SignatureFileError(
            f"{path} exists but the spec has no signatures: entry with its sha256; delete "
            f"the file and record again, or add the entry record mode wrote")
    return Signatures.from_text(text, str(path))


def write_signatures(path: Path, signatures: Signatures) -> str:
    """Write the sidecar atomically; return its sha256 (for the spec's entry)."""
    text = signatures.to_text()
    atomic_write(path, text)
    return sha256_text(text)


def format_table(signatures: Signatures) -> str:
    """A readable table of a sidecar: per unit, its two top classes and its profile."""
    lines = []
    names = signatures.classes
    for layer, units in sorted(signatures.layers.items()):
        for unit, profile in sorted(units.items()):
            label = top_classes(profile, names)
            values = " ".join(f"{v:+.3f}" for v in profile)
            lines.append(f"{layer} unit {unit}: carries {label[0]} (then {label[1]})  "
                         f"[{values}]" if len(label) > 1 else f"{layer} unit {unit}: [{values}]")
    return "\n".join(lines)


__all__ = ["PROFILE_DECIMALS", "SignatureFileError", "Signatures", "format_table",
           "read_signatures", "rounded_profile", "sha256_text", "write_signatures"]
