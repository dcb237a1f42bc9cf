"""Safe YAML with line numbers: a tiny node tree the spec validator walks (torch-free).

PyYAML composes the document into nodes (no Python object is ever constructed from a tag);
we convert those nodes into :class:`YNode` values that remember their 1-based line. Tags
outside the YAML core schema (``!!python/object/apply:...``, ``!custom``) and duplicate
mapping keys are reported as problems instead of being silently accepted. The loader is a
private ``SafeLoader`` subclass; PyYAML's global state is never patched.

Example::

    >>> node, problems = parse_yaml("a: 1\\nb: [x, y]\\n", "s.yaml")
    >>> node.get("b").line, [c.value for c in node.get("b").items], problems
    (2, ['x', 'y'], [])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from pytest_unitablate.errors import Problem

_CORE_TAGS = {
    "tag:yaml.org,2002:" + t
    for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
}


class _Loader(yaml.SafeLoader):
    """Private loader: composes nodes only."""


@dataclass
class YNode:
    """A YAML value with its line; ``kind`` is ``map``, ``seq`` or ``scalar``."""

    kind: str
    line: int
    value: Any = None  # scalars: the Python value
    items: list[YNode] = field(default_factory=list)  # seq
    entries: list[tuple[YNode, YNode]] = field(default_factory=list)  # map: (key, value)

    def get(self, key: str) -> YNode | None:
        for k, v in self.entries:
            if k.value == key:
                return v
        return None

    def key_nodes(self) -> list[YNode]:
        return [k for k, _ in self.entries]

    def describe(self) -> str:
        """Type name for messages: ``a mapping``, ``a list``, ``the number 20``..."""
        if self.kind == "map":
            return "a mapping"
        if self.kind == "seq":
            return "a list"
        if self.value is None:
            return "nothing (null)"
        if isinstance(self.value, bool):
            return f"the boolean {str(self.value).lower()}"
        if isinstance(self.value, (int, float)):
            return f"the number {self.value!r}"
        return f"the string {self.value!r}"


def _convert(node: yaml.Node, path: str, problems: list[Problem], loader: _Loader) -> YNode:
    line = node.start_mark.line + 1
    if node.tag not in _CORE_TAGS:
        problems.append(
            Problem(path, line, f"tag {node.tag!r} is not allowed: specs are plain YAML "
                    f"(nothing in a spec is ever executed or constructed)")
        )
        return YNode("scalar", line, None)
    if isinstance(node, yaml.MappingNode):
        out = YNode("map", line)
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = _convert(key_node, path, problems, loader)
            value = _convert(value_node, path, problems, loader)
            hashable = key.value if key.kind == "scalar" else id(key)
            if hashable in seen:
                problems.append(
                    Problem(path, key.line, f"duplicate key {key.value!r} (first at line "
                            f"{seen[hashable]}); YAML would silently keep only the last one")
                )
                continue
            seen[hashable] = key.line
            out.entries.append((key, value))
        return out
    if isinstance(node, yaml.SequenceNode):
        return YNode("seq", line, items=[_convert(n, path, problems, loader) for n in node.value])
    assert isinstance(node, yaml.ScalarNode)
    scalar: Any
    try:
        scalar = loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        problems.append(Problem(path, line, f"cannot read value {node.value!r}: {exc}"))
        scalar = None
    if not isinstance(scalar, (str, int, float, bool, type(None))):
        scalar = str(node.value)  # timestamps and the like: keep the text
    return YNode("scalar", line, scalar)


def parse_yaml(text: str, path: str) -> tuple[YNode | None, list[Problem]]:
    """Parse ``text``; return the root node (``None`` on a syntax error) and problems."""
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else 0
            col = f", column {mark.column + 1}" if mark is not None else ""
            what = exc.problem or str(exc)
            context = f" ({exc.context})" if exc.context else ""
            return None, [Problem(path, line, f"YAML syntax error{col}: {what}{context}")]
        except yaml.YAMLError as exc:
            return None, [Problem(path, 0, f"YAML error: {exc}")]
        if root is None:
            return None, [Problem(path, 1, "the spec is empty")]
        problems: list[Problem] = []
        return _convert(root, path, problems, loader), problems
    finally:
        loader.dispose()
