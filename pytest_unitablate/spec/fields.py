r"""Reading the scalar fields of a spec, every problem collected (torch-free).

:class:`Fields` turns YAML nodes (with their lines) into Python values and records a
located :class:`~pytest_unitablate.errors.Problem` for each value it cannot take, with a
"did you mean" where a near name exists; the loader builds on it for the spec's structure.

Example::

    >>> from pytest_unitablate.spec.yaml_lines import parse_yaml
    >>> root, _ = parse_yaml("x: 20\n", "s.yaml")
    >>> node = root.get("x")
    >>> fields = Fields("s.yaml")
    >>> fields.percent(node, "min_drop"), fields.problems[0].line
    ((False, None), 1)
"""

from __future__ import annotations

import difflib
import math
import re

from pytest_unitablate.errors import Problem
from pytest_unitablate.spec.keys import ABLATION_NAMES, ID_SAFE, IDENT, PERCENT
from pytest_unitablate.spec.model import Ablation
from pytest_unitablate.spec.yaml_lines import YNode

#: Record mode's end-of-line comment: ``# recorded: measured 25.0 pp, margin 3.1 pp``.
RECORDED = re.compile(r"#\s*recorded: measured (-?[0-9.]+) ?(pp|%|nats)")


def closest(name: str, candidates: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """The candidates closest to ``name`` (difflib), for "did you mean".

    >>> closest("min_dorp", ["min_drop", "max_drop"])
    ['min_drop', 'max_drop']
    """
    return difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.5)


def did_you_mean(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    hints = closest(name, candidates)
    return f"; did you mean {' or '.join(repr(h) for h in hints)}?" if hints else ""


def plain(node: YNode) -> object:
    """A node as plain Python values (mappings, lists, scalars), lines dropped."""
    if node.kind == "map":
        return {str(k.value): plain(v) for k, v in node.entries}
    if node.kind == "seq":
        return [plain(v) for v in node.items]
    return node.value


class Fields:
    """Typed reads of YAML nodes; problems accumulate in :attr:`problems`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []
        #: the spec's text by line (for record mode's ``# recorded: measured ...`` comments)
        self.source_lines: list[str] = []

    def recorded_measure(self, line: int) -> float | None:
        """The drop record mode wrote in the comment of ``line`` (a fraction, or nats),
        when that line holds its only threshold's comment; ``None`` otherwise."""
        if not 0 < line <= len(self.source_lines):
            return None
        found = RECORDED.findall(self.source_lines[line - 1])
        if len(found) != 1:
            return None
        value, unit = found[0]
        return float(value) if unit == "nats" else float(value) / 100.0

    def err(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))

    def keys(self, node: YNode, allowed: dict[str, str] | tuple[str, ...], where: str) -> None:
        names = list(allowed)
        for key in node.key_nodes():
            if key.kind != "scalar" or not isinstance(key.value, str):
                self.err(key.line, f"{where}: keys must be strings, got {key.describe()}")
            elif key.value not in allowed:
                self.err(
                    key.line,
                    f"unknown key {key.value!r} in {where}{did_you_mean(key.value, names)} "
                    f"(allowed: {', '.join(names)})",
                )

    def expect_map(self, node: YNode | None, line: int, what: str) -> YNode | None:
        if node is None:
            return None
        if node.kind != "map":
            self.err(node.line, f"{what} must be a mapping, got {node.describe()}")
            return None
        return node

    def string(self, node: YNode | None, what: str, pattern: re.Pattern[str] | None = None,
               hint: str = "") -> str | None:
        if node is None:
            return None
        if node.kind != "scalar" or not isinstance(node.value, str) or not node.value.strip():
            self.err(node.line, f"{what} must be a non-empty string, got {node.describe()}")
            return None
        if pattern is not None and not pattern.match(node.value):
            self.err(node.line, f"{what} {node.value!r} is not valid{hint}")
            return None
        return str(node.value)

    def data_source(self, node: YNode | None, what: str, pattern: re.Pattern[str],
                    hint: str) -> tuple[str | None, tuple[tuple[str, str], ...]]:
        """``data:`` (or ``ranking_data:``): one reference, or a mapping of named groups
        to references. Returns the text shown in reports and the groups (empty for one)."""
        if node is None or node.kind != "map":
            return self.string(node, what, pattern, hint), ()
        if not node.entries:
            self.err(node.line, f"{what} is an empty mapping: name at least one group")
            return None, ()
        groups: list[tuple[str, str]] = []
        for key, value in node.entries:
            name = key.value
            if not isinstance(name, str) or not ID_SAFE.match(name) or name == "overall":
                self.err(key.line, f"a {what} group needs a name of letters, digits and _ - "
                         f". (not 'overall', which is all the groups), got {key.describe()}")
                continue
            ref = self.string(value, f"{what} group {name!r}", pattern, hint)
            if ref is not None:
                groups.append((name, ref))
        text = "{" + ", ".join(f"{name}: {ref}" for name, ref in groups) + "}"
        return (text if groups else None), tuple(groups)

    def position(self, node: YNode | None) -> int | str | None:
        """``position:``: an index into the sequence, or ``last``."""
        if node is None:
            return None
        if node.kind == "scalar" and node.value == "last":
            return "last"
        if node.kind == "scalar" and isinstance(node.value, int) and not isinstance(
                node.value, bool):
            return int(node.value)
        self.err(node.line, f"position must be an index into the sequence (e.g. -1, the "
                 f"last position of every example) or last (each example's last position "
                 f"its attention_mask keeps), got {node.describe()}")
        return None

    def output(self, node: YNode | None) -> int | str | None:
        """``output:``: a non-negative index, or a key / attribute name."""
        if node is None:
            return None
        if node.kind == "scalar" and isinstance(node.value, int) and not isinstance(
                node.value, bool):
            return self.integer(node, "output (an index into the model's tuple output)",
                                minimum=0)
        return self.string(node, "output", IDENT,
                           " (an index like 1, or a key like logits of a dict output)")

    def integer(self, node: YNode | None, what: str, minimum: int | None = None) -> int | None:
        if node is None:
            return None
        if node.kind != "scalar" or isinstance(node.value, bool) or not isinstance(
            node.value, int
        ):
            self.err(node.line, f"{what} must be an integer, got {node.describe()}")
            return None
        if minimum is not None and node.value < minimum:
            self.err(node.line, f"{what} must be >= {minimum}, got {node.value}")
            return None
        return int(node.value)

    def percent(
        self, node: YNode, what: str, allow_null: bool = False
    ) -> tuple[bool, float | None]:
        """Parse ``20%``; returns (ok, fraction)."""
        if node.kind == "scalar" and node.value is None and allow_null:
            return True, None
        if node.kind == "scalar" and isinstance(node.value, str):
            m = PERCENT.match(node.value)
            if m:
                value = round(float(m.group(1)) / 100.0, 12)  # 0.9% -> 0.009, not ...01
                if not -1.0 <= value <= 1.0:
                    self.err(node.line, f"{what} {node.value} is outside -100%..100%")
                    return False, None
                return True, value
        if node.kind == "scalar" and isinstance(node.value, (int, float)) and not isinstance(
            node.value, bool
        ):
            v = node.value
            unit = ("an accuracy; 85% means 85 in 100 right" if "accuracy" in what
                    else "percentage points; 20% means 20 pp")
            self.err(
                node.line,
                f"{what} is a bare number ({v!r}); write it as a percentage with a % sign, "
                f"e.g. '{what.split()[-1]}: {v if abs(v) > 1 else v * 100:g}%' ({unit})",
            )
            return False, None
        null_hint = " or null (to be filled by record mode)" if allow_null else ""
        self.err(node.line, f"{what} must be a percentage like 20%{null_hint}, got "
                 f"{node.describe()}")
        return False, None

    def nats(self, node: YNode, what: str, allow_null: bool = False
             ) -> tuple[bool, float | None]:
        """Parse a plain number of nats (``0.5``); returns (ok, value)."""
        if node.kind == "scalar" and node.value is None and allow_null:
            return True, None
        if node.kind == "scalar" and isinstance(node.value, (int, float)) and not isinstance(
                node.value, bool):
            v = float(node.value)
            if not math.isfinite(v):
                self.err(node.line, f"{what} must be a finite number of nats, got {node.value}")
                return False, None
            return True, v
        if node.kind == "scalar" and isinstance(node.value, str) and PERCENT.match(node.value):
            self.err(node.line, f"{what} is in nats, not a percentage: write a plain number, "
                     f"e.g. '{what}: 0.5' (a mean drop of 0.5 in log p(true class))")
            return False, None
        null_hint = " or null (to be filled by record mode)" if allow_null else ""
        self.err(node.line, f"{what} must be a number of nats like 0.5{null_hint}, got "
                 f"{node.describe()}")
        return False, None

    # --- nodes --------------------------------------------------------------------------

    def ablation(self, node: YNode | None) -> Ablation | None:
        if node is None:
            return None
        if node.kind == "scalar" and node.value in ABLATION_NAMES:
            return Ablation(kind=node.value, line=node.line)
        if node.kind == "map":
            self.keys(node, ("constant", "resample"), "ablation")
            res = node.get("resample")
            if res is not None and len(node.entries) == 1:
                return self._resample(res, node.line)
            const = node.get("constant")
            if const is not None and len(node.entries) == 1:
                v = const.value
                if const.kind == "scalar" and isinstance(v, (int, float)) and not isinstance(
                    v, bool
                ) and v == v and abs(v) != float("inf"):
                    return Ablation(kind="constant", value=float(v), line=node.line)
                self.err(const.line, f"ablation constant must be a finite number, got "
                         f"{const.describe()}")
                return None
            if not node.entries:
                self.err(node.line, "ablation mapping is empty; write {constant: 0.5} or "
                         "{resample: {draws: 4}}")
            elif len(node.entries) > 1:
                self.err(node.line, "ablation takes one of constant or resample, not both")
            return None
        hint = did_you_mean(str(node.value), ABLATION_NAMES) if node.kind == "scalar" else ""
        self.err(node.line, f"ablation must be zero, mean, resample, {{constant: <number>}} "
                 f"or {{resample: {{draws: <count>}}}}, got {node.describe()}{hint}")
        return None

    def _resample(self, node: YNode, line: int) -> Ablation | None:
        """``{resample: {draws: K}}`` (``{resample: {}}`` and ``{resample: null}``: 1)."""
        if node.kind == "scalar" and node.value is None:
            return Ablation(kind="resample", line=line)
        if node.kind != "map":
            self.err(node.line, f"resample takes {{draws: <count>}}, got {node.describe()}")
            return None
        self.keys(node, ("draws",), "resample")
        draws = self.integer(node.get("draws"), "resample draws", minimum=1) \
            if node.get("draws") is not None else 1
        return None if draws is None else Ablation(kind="resample", line=line, draws=draws)


__all__ = ["Fields", "closest", "did_you_mean", "plain"]
