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

The file is edited as text, not re-serialised: each threshold's scalar is located with
PyYAML's node marks (exact character offsets) and replaced in place, and only that line's
end-of-line comment is set (a user's own comment on the line is kept before the
``recorded:`` part). Every other byte stays as it was: line endings (``\r\n`` too), flow or
block style, quoting, key order, blank lines. The ``provenance:`` block's values are
replaced the same way, missing keys are added below it, and a spec without one gets it
appended. The write is atomic (temporary file, then ``os.replace``), so an interrupted run
never leaves a half-written spec.

Example::

    >>> u = ThresholdUpdate(check_index=0, mode_key=None, target_key="seven",
    ...                     kind="min_drop", value=0.123, measured=0.25, margin=0.127)
    >>> u.comment()
    'recorded: measured 25.0 pp, margin 12.7 pp'
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_unitablate.atomic import atomic_write
from pytest_unitablate.spec.model import ConstraintKind

#: Marker that starts the end-of-line comments record mode writes (and may overwrite).
COMMENT_PREFIX = "recorded:"
#: The start of the comment of a calibrated threshold (record mode ``calibrate``): one
#: threshold on a line (``calibrated over 3 models: ...``) or several (``calibrated
#: min_drop over 3 models: ...; max_drop over ...``).
_CALIBRATED = re.compile(r"\bcalibrated (?:over|min_|max_)")
#: Where the record of an end-of-line comment starts (after a user's own note, if any).
_RECORDED = re.compile(rf"[#;] *{COMMENT_PREFIX}")



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
    #: a calibrated threshold: what it rests on (``over 3 models: measured 60.0-95.0 pp``)
    rests_on: str | None = None

    def comment(self) -> str:
        """The end-of-line comment written beside the threshold.

        >>> ThresholdUpdate(0, None, "four", "min_drop", 0.2, 0.6, 0.4,
        ...                 rests_on="over 3 models: measured 60.0-95.0 pp").comment()
        'calibrated over 3 models: measured 60.0-95.0 pp'
        """
        if self.rests_on is not None:
            return f"calibrated {self.rests_on}"
        if "logprob" in self.kind:
            return (f"{COMMENT_PREFIX} measured {self.measured:.3f} nats, "
                    f"margin {self.margin:.3f} nats")
        unit = "%" if "relative" in self.kind or "accuracy" in self.kind else " pp"
        return (
            f"{COMMENT_PREFIX} measured {self.measured * 100:.1f}{unit}, "
            f"margin {self.margin * 100:.1f}{unit}"
        )


def _tenths(kind: str, value: float) -> int:
    """``value`` in tenths of a percent, rounded away from failing."""
    tenths = value * 1000.0
    # Tolerate float noise (0.123 * 1000 = 122.99999999999999) before rounding outward.
    tenths = round(tenths, 6)
    return math.floor(tenths) if kind.startswith("min") else math.ceil(tenths)


def rounded_threshold(kind: str, value: float) -> float:
    """The fraction (nats for a log-prob kind) :func:`format_threshold` writes: what the
    spec will hold. Log-prob thresholds round to thousandths of a nat, away from failing.

    >>> rounded_threshold("min_drop", 0.12345), rounded_threshold("max_logprob_drop", 0.12301)
    (0.123, 0.124)
    """
    return _tenths(kind, value) / 1000.0  # tenths of a percent and thousandths of a nat


def format_threshold(kind: ConstraintKind, value: float) -> str:
    """Render a fraction as a spec percentage, rounded away from failing.

    ``min_*`` thresholds round down and ``max_*`` thresholds round up to 0.1, so the written
    value is never stricter than the bound it came from.

    >>> format_threshold("min_drop", 0.12345)
    '12.3%'
    >>> format_threshold("max_drop", 0.01201)
    '1.3%'
    """
    # _tenths is an int, so neither text can read "-0.0"
    if "logprob" in kind:
        return f"{_tenths(kind, value) / 1000:.3f}"
    return f"{_tenths(kind, value) / 10:.1f}%"


class RecordError(Exception):
    """A recorded update cannot be applied (the spec changed under us)."""


def _compose(text: str) -> Any:
    import yaml

    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise RecordError(f"the spec no longer parses: {exc}") from None


def _get(node: Any, key: Any) -> Any:
    """The value node of ``key`` in a mapping node (``None`` if absent)."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if k.value == key:
            return v
    return None


def _target_node(root: Any, update: ThresholdUpdate) -> Any:
    """The mapping node holding ``update``'s thresholds (``checks[i].[mode.]expect.target``)."""
    import yaml

    checks = _get(root, "checks")
    if not isinstance(checks, yaml.SequenceNode) or update.check_index >= len(checks.value):
        raise RecordError(f"check #{update.check_index + 1} no longer exists")
    check = checks.value[update.check_index]
    holder = check if update.mode_key is None else _get(check, update.mode_key)
    expect = _get(holder, "expect")
    if not isinstance(expect, yaml.MappingNode):
        raise RecordError(f"check #{update.check_index + 1} no longer has the expected shape")
    key = update.target_key
    for k, v in expect.value:
        # YAML may hold "7" where the model has 7 (or the other way round)
        if k.value == key or str(k.value) == str(key):
            if not isinstance(v, yaml.MappingNode):
                raise RecordError(
                    f"target {key!r} of check #{update.check_index + 1} is not a mapping")
            return v
    raise RecordError(f"target {key!r} not found in check #{update.check_index + 1}")


def _line_bounds(text: str, index: int) -> tuple[int, int]:
    """Start of the line holding ``index`` and the end of its content (before the break)."""
    start = text.rfind("\n", 0, index) + 1
    end = text.find("\n", index)
    end = len(text) if end < 0 else end
    if end > start and text[end - 1] == "\r":
        end -= 1
    return start, end


def _with_comment(line: str, value_end: int, recorded: str) -> str:
    """``line`` with its end-of-line comment set to ``recorded`` (a user's text kept)."""
    rest = line[value_end:]
    hash_at = next((i for i in range(len(rest)) if rest[i] == "#" and (
        i == 0 or rest[i - 1] in " \t")), None)
    if hash_at is None:
        return line.rstrip(" \t") + f"  # {recorded}"
    code = line[:value_end + hash_at]
    old = rest[hash_at + 1:].strip()
    user = _CALIBRATED.split(old.split(COMMENT_PREFIX)[0])[0].rstrip(" ;") if old else ""
    return code + (f"# {user}; {recorded}" if user else f"# {recorded}")


def _replace_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(spans, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def _provenance_edits(text: str, root: Any, provenance: Mapping[str, str], nl: str
                      ) -> tuple[list[tuple[int, int, str]], str]:
    """Spans that update the provenance block, and text to append (a new block or keys)."""
    import yaml

    quoted = {k: '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
              for k, v in provenance.items()}
    block = _get(root, "provenance")
    if not isinstance(block, yaml.MappingNode) or block.flow_style:
        if block is not None:
            raise RecordError("the provenance: entry is not a block mapping; remove it and "
                              "record again")
        tail = "" if text.endswith("\n") or not text else nl
        lines = "".join(f"  {k}: {quoted[k]}{nl}" for k in sorted(provenance))
        return [], f"{tail}provenance:{nl}{lines}"
    spans: list[tuple[int, int, str]] = []
    present = {str(k.value): v for k, v in block.value}
    for key in sorted(provenance):
        node = present.get(key)
        if node is not None and str(node.value) != str(provenance[key]):
            spans.append((node.start_mark.index, node.end_mark.index, quoted[key]))
    missing = [k for k in sorted(provenance) if k not in present]
    if missing:
        last = block.value[-1][1]
        _, end = _line_bounds(text, last.end_mark.index - 1)  # the line its value ends on
        indent = " " * block.value[0][0].start_mark.column
        insert = "".join(f"{nl}{indent}{k}: {quoted[k]}" for k in missing)
        spans.append((end, end, insert))
    return spans, ""


def _signatures_edits(text: str, root: Any, file: str, sha256: str, nl: str
                      ) -> list[tuple[int, int, str]]:
    """Spans that set the top-level ``signatures: {file: ..., sha256: ...}`` entry: its
    whole value is replaced in place, or a new line goes before ``checks:``."""
    import yaml

    entry = f"{{file: {file}, sha256: {sha256}}}"
    node = _get(root, "signatures")
    if node is not None:
        return [(node.start_mark.index, node.end_mark.index, entry)]
    if not isinstance(root, yaml.MappingNode):
        raise RecordError("the spec is not a mapping")
    for key, _ in root.value:
        if key.value == "checks":
            start, _ = _line_bounds(text, key.start_mark.index)
            line = f"signatures: {entry}  # written by record mode (identity: signature){nl}"
            return [(start, start, line)]
    raise RecordError("the spec has no checks: entry")


def apply_updates(
    path: str | os.PathLike[str],
    updates: Sequence[ThresholdUpdate],
    *,
    provenance: Mapping[str, str] | None = None,
    signatures: tuple[str, str] | None = None,
) -> int:
    """Write ``updates`` (and a ``provenance`` block) into the spec at ``path``, atomically.

    ``signatures`` is ``(file, sha256)`` of a signatures sidecar just written: the spec's
    ``signatures:`` entry is set to it. Returns the number of thresholds whose text changed.
    The file is left untouched when nothing changes; otherwise only the rewritten values,
    their lines' comments, the provenance block and the signatures entry differ, byte for
    byte.
    """
    original, result, changed = rewritten_spec(path, updates, provenance=provenance,
                                               signatures=signatures)
    if result != original:
        atomic_write(Path(path), result)
    return changed


def rewritten_spec(
    path: str | os.PathLike[str],
    updates: Sequence[ThresholdUpdate],
    *,
    provenance: Mapping[str, str] | None = None,
    signatures: tuple[str, str] | None = None,
) -> tuple[str, str, int]:
    """What :func:`apply_updates` would write, without writing: ``(original, rewritten,
    changed)``, for a caller that writes the spec together with another file."""
    with open(Path(path), encoding="utf-8", newline="") as fh:
        original = fh.read()
    nl = "\r\n" if "\r\n" in original else "\n"
    root = _compose(original)
    spans: list[tuple[int, int, str]] = []
    comments: dict[int, tuple[int, list[ThresholdUpdate]]] = {}
    changed = 0
    for update in sorted(updates, key=lambda u: (u.check_index, str(u.target_key), u.kind)):
        target = _target_node(root, update)
        node = _get(target, update.kind)
        if node is None:
            raise RecordError(f"{update.kind} of target {update.target_key!r} in check "
                              f"#{update.check_index + 1} no longer exists")
        text = format_threshold(update.kind, update.value)
        start, end = node.start_mark.index, node.end_mark.index
        if original[start:end] != text:
            spans.append((start, end, text))
            changed += 1
        line_start, _ = _line_bounds(original, start)
        last_end, group = comments.get(line_start, (end, []))
        comments[line_start] = (max(last_end, end), [*group, update])
    extra_spans, appended = ([], "") if not provenance else _provenance_edits(
        original, root, provenance, nl)
    if signatures is not None:
        extra_spans = [*extra_spans, *_signatures_edits(original, root, *signatures, nl)]
    # comments: rewrite each touched line once, after its value spans are applied
    line_edits: list[tuple[int, int, str]] = []
    for line_start, (value_end, group) in comments.items():
        _, line_end = _line_bounds(original, line_start)
        line = original[line_start:line_end]
        local = [(s - line_start, e - line_start, new) for s, e, new in spans
                 if line_start <= s < line_end]
        shift = sum(len(new) - (e - s) for s, e, new in local)
        edited = _replace_spans(line, local)
        line_edits.append((line_start, line_end,
                           _with_comment(edited, value_end - line_start + shift,
                                         _comment_for(group))))
    touched = {ls for ls, _, _ in line_edits}
    others = [s for s in spans if _line_bounds(original, s[0])[0] not in touched]
    result = _replace_spans(original, [*line_edits, *others, *extra_spans]) + appended
    return original, result, changed


def _comment_for(updates: Sequence[ThresholdUpdate]) -> str:
    """One comment for every threshold recorded on a line."""
    if len(updates) == 1:
        return updates[0].comment()
    if all(u.rests_on is not None for u in updates):
        return "calibrated " + "; ".join(f"{u.kind} {u.rests_on}" for u in updates)
    parts = [f"{u.kind} " + u.comment().removeprefix(f"{COMMENT_PREFIX} ") for u in updates]
    return f"{COMMENT_PREFIX} " + "; ".join(parts)


def recorded_measurement(line: str, kind: str) -> str | None:
    """What record mode (or ``discover``) wrote it measured for constraint ``kind``, from
    the end-of-line comment of a spec ``line``: ``measured 51.5 pp`` (``None`` when the
    line says nothing of it).

    >>> line = "  four: {min_drop: 38.1%}  # recorded: min_drop measured 51.5 pp, margin 13.3 pp"
    >>> recorded_measurement(line, "min_drop"), recorded_measurement(line, "max_drop")
    ('measured 51.5 pp', None)
    >>> recorded_measurement("  one: {min_accuracy: 89.8%}  # recorded: measured 97.1%, "
    ...                      "margin 7.2%", "min_accuracy")
    'measured 97.1%'
    """
    found = _RECORDED.search(line)  # "# recorded:", or "# a user's note; recorded:"
    if found is None:
        return None
    rest = line[found.end():]
    parts = [p.strip() for p in rest.split(";") if "measured" in p]
    for part in parts:
        head, _, value = part.partition("measured")
        if head.strip() in (kind, "") and (head.strip() == kind or len(parts) == 1):
            return f"measured {value.split(',')[0].strip()}"
    return None


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
