"""Record mode: write measured thresholds back into a spec file (torch-free).

Record mode follows syrupy's ``--snapshot-update`` and pytest-regressions' ``--force-regen``:

* ``none`` (default) never writes;
* ``new`` fills only thresholds that are still empty (``min_drop: null`` or ``~``);
* ``failed`` rewrites the thresholds of failing items, which still fail this run;
* ``all`` rewrites every threshold of the selected items, which then pass.

A recorded threshold is a bound of the paired confidence interval of the drop, not the point
estimate, so a retrain that moves a class by sampling noise alone does not fail the check:
``min_drop`` gets the lower bound, ``max_drop`` the upper bound (relative constraints the same
bounds divided by the baseline). The measurement and the margin are written beside it as an
end-of-line comment starting with ``recorded:``; a top-level ``provenance:`` block keeps the
environment (torch version, device, dtype, data and weight hashes).

The file is edited with a comment-preserving YAML round trip (ruamel.yaml): the user's
comments, key order, quoting and untouched entries stay as they were; a flow mapping that
gets a new value is turned into block style so the comment has a line of its own. The write
is atomic (temporary file, then ``os.replace``), so an interrupted run never leaves a
half-written spec.

Example::

    >>> u = ThresholdUpdate(check_index=0, mode_key=None, target_key="seven",
    ...                     kind="min_drop", value=0.123, measured=0.25, margin=0.127)
    >>> u.comment()
    'recorded: measured 25.0 pp, margin 12.7 pp'
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_unitablate.atomic import atomic_write
from pytest_unitablate.spec.model import ConstraintKind

#: Marker that starts the end-of-line comments record mode writes (and may overwrite).
COMMENT_PREFIX = "recorded:"



@dataclass(frozen=True)
class ThresholdUpdate:
    """One threshold to write: where it lives in the YAML and what to write.

    ``mode_key`` is ``None`` for a named-unit check (``checks[i].expect``) and
    ``"any_unit"``, ``"every_unit"`` or ``"top_units"`` for a layer-wide check
    (``checks[i].<mode_key>.expect``). ``value``, ``measured`` and ``margin`` are fractions.
    """

    check_index: int
    mode_key: str | None
    target_key: str | int
    kind: ConstraintKind
    value: float
    measured: float
    margin: float

    def comment(self) -> str:
        """The end-of-line comment written beside the threshold."""
        unit = "%" if "relative" in self.kind else " pp"
        return (
            f"{COMMENT_PREFIX} measured {self.measured * 100:.1f}{unit}, "
            f"margin {self.margin * 100:.1f}{unit}"
        )


def format_threshold(kind: ConstraintKind, value: float) -> str:
    """Render a fraction as a spec percentage, rounded away from failing.

    ``min_*`` thresholds round down and ``max_*`` thresholds round up to 0.1, so the written
    value is never stricter than the bound it came from.

    >>> format_threshold("min_drop", 0.12345)
    '12.3%'
    >>> format_threshold("max_drop", 0.01201)
    '1.3%'
    """
    tenths = value * 1000.0
    # Tolerate float noise (0.123 * 1000 = 122.99999999999999) before rounding outward.
    tenths = round(tenths, 6)
    rounded = math.floor(tenths) if kind.startswith("min") else math.ceil(tenths)
    text = f"{rounded / 10:.1f}"
    if text == "-0.0":
        text = "0.0"
    return f"{text}%"


class RecordError(Exception):
    """A recorded update cannot be applied (the spec changed under us)."""


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip mode: comments, order and quoting survive
    yaml.preserve_quotes = True
    yaml.width = 4096
    return yaml


def _find_target_map(doc: Any, update: ThresholdUpdate) -> Any:
    from ruamel.yaml.comments import CommentedMap

    try:
        check = doc["checks"][update.check_index]
        holder = check if update.mode_key is None else check[update.mode_key]
        expect = holder["expect"]
    except (KeyError, IndexError, TypeError) as exc:
        raise RecordError(
            f"check #{update.check_index + 1} no longer has the expected shape"
        ) from exc
    key: Any = update.target_key
    if key not in expect:
        # YAML may hold "7" where the model has 7 (or the other way round).
        alt = str(key) if isinstance(key, int) else (int(key) if key.isdigit() else None)
        if alt is None or alt not in expect:
            raise RecordError(f"target {key!r} not found in check #{update.check_index + 1}")
        key = alt
    target = expect[key]
    if not isinstance(target, CommentedMap):
        raise RecordError(f"target {key!r} of check #{update.check_index + 1} is not a mapping")
    return target


def _set_comment(target: Any, key: str, text: str) -> None:
    """Put ``text`` as the end-of-line comment of ``key``, keeping a user's own comment."""
    old = target.ca.items.get(key)
    user = ""
    if old and len(old) > 2 and old[2] is not None:
        raw = str(old[2].value).strip().lstrip("#").strip()
        if raw and not raw.startswith(COMMENT_PREFIX):
            user = raw.split(COMMENT_PREFIX)[0].rstrip(" ;")
        del target.ca.items[key]
    target.yaml_add_eol_comment(f"{user}; {text}" if user else text, key)


def apply_updates(
    path: str | os.PathLike[str],
    updates: Sequence[ThresholdUpdate],
    *,
    provenance: Mapping[str, str] | None = None,
) -> int:
    """Write ``updates`` (and a ``provenance`` block) into the spec at ``path``, atomically.

    Returns the number of thresholds whose text changed. The file is left untouched when
    nothing changes.
    """
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.util import load_yaml_guess_indent

    file = Path(path)
    original = file.read_text(encoding="utf-8")
    _, seq_indent, offset = load_yaml_guess_indent(original)
    seq_indent, offset = seq_indent or 2, offset or 0
    yaml = _yaml()
    # ruamel reports the sequence indent (dash offset included) and the dash offset; the
    # mapping indent is what remains.
    yaml.indent(mapping=max(seq_indent - offset, 2), sequence=seq_indent, offset=offset)
    doc = yaml.load(original)

    changed = 0
    touched_provenance = False
    for update in sorted(
        updates, key=lambda u: (u.check_index, str(u.target_key), u.kind)
    ):
        target = _find_target_map(doc, update)
        text = format_threshold(update.kind, update.value)
        if target.get(update.kind) == text:
            _set_comment(target, update.kind, update.comment())
            continue
        if target.fa.flow_style():
            target.fa.set_block_style()
        target[update.kind] = text
        _set_comment(target, update.kind, update.comment())
        changed += 1

    if provenance:
        block = doc.get("provenance")
        if not isinstance(block, CommentedMap):
            block = CommentedMap()
            doc["provenance"] = block
        for key in sorted(provenance):
            if block.get(key) != provenance[key]:
                block[key] = provenance[key]
                touched_provenance = True
    if changed == 0 and not touched_provenance:
        return 0

    import io

    buffer = io.StringIO()
    yaml.dump(doc, buffer)
    new_text = buffer.getvalue()
    if new_text == original:
        return 0
    atomic_write(file, new_text)
    return changed


def provenance_mismatches(
    recorded: Mapping[str, str], current: Mapping[str, str]
) -> list[str]:
    """Human lines for every provenance key whose recorded value differs from now.

    >>> provenance_mismatches({"torch": "2.1.0"}, {"torch": "2.4.0"})
    ['torch: recorded 2.1.0, now 2.4.0']
    """
    lines = []
    for key in sorted(recorded):
        if key in current and str(recorded[key]) != str(current[key]):
            lines.append(f"{key}: recorded {recorded[key]}, now {current[key]}")
    return lines
