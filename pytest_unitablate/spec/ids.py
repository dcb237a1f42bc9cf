r"""Deterministic, unique, ``-k``-safe test ids for the items of a spec (torch-free).

An item is one constraint of one target of one check. Its id reads like the check, then the
target, then the constraint::

    conv5-u245-seven-min_drop             unit 245 of conv5, class seven, min_drop
    conv5-u245+12-overall-max_drop        units 245 and 12 ablated together
    conv5-any3-seven-min_drop             any_unit with at_least: 3
    conv5-every-overall-max_drop          every_unit
    conv5-top20-seven-seven-min_drop      the 20 units most damaging to seven, class seven
    conv5-u245:mean-seven-min_drop        the check overrides the spec's ablation
    edge_detector-seven-min_drop          a check with ``name: edge_detector``
    blocks.1.attn-h3-zero-min_drop        head 3 (``unit: head``)
    blocks.1.attn-every_head-overall-max_drop   every_unit over heads

An id holds no brackets at all. pytest (9.2 and later parse node ids as ``name[params]``)
treats a ``[`` anywhere in a name as the start of a parameter part, so a bracket in the
middle broke ``--lf``, ``--ff``, ``--sw``, node-id selection and JUnit names; without one,
``path::id`` round-trips through every pytest from 8.0 on. Only characters pytest's ``-k``
grammar accepts in one identifier are used (``[\w:+\-.]``), so ``-k 'conv5-u245-'``
selects that check's items. A duplicate id is a spec problem, so ids are unique by
construction.

Example::

    >>> slug("hot dog!")
    'hot_dog_'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pytest_unitablate.spec.model import OVERALL, Check, Constraint, Expectation, Spec

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def slug(name: str) -> str:
    """ASCII ``[A-Za-z0-9_]`` form of a class name (non-ASCII and punctuation become ``_``)."""
    return _UNSAFE.sub("_", name) or "_"


def target_label(spec: Spec, target: str | int) -> str:
    """``overall``, the class name's slug, or ``class3`` for an unnamed index."""
    if target == OVERALL:
        return OVERALL
    if isinstance(target, int):
        if spec.classes is not None and target < len(spec.classes):
            return slug(spec.classes[target])
        return f"class{target}"
    return slug(target)


def check_label(spec: Spec, check: Check) -> str:
    """The name part of the id: what is ablated, e.g. ``conv5-u245+12:mean``."""
    if check.name:
        base = check.name
    else:
        heads = spec.unit_for(check) == "head"
        if check.mode == "units":
            selector = ("h" if heads else "u") + "+".join(str(u) for u in check.units)
        elif check.mode == "any_unit":
            selector = "any" if check.at_least == 1 else f"any{check.at_least}"
        elif check.mode == "every_unit":
            selector = "every"
        else:
            cls = target_label(spec, check.top_class) if check.top_class is not None else "?"
            selector = f"top{check.top_units}-{cls}"
        if heads and check.mode != "units":
            selector += "_head"
        base = f"{check.layer}-{selector}"
    ablation = spec.ablation_for(check)
    if ablation.label() != spec.ablation.label():
        base += f":{ablation.label()}"
    return base


@dataclass(frozen=True)
class ItemKey:
    """One pytest item of a spec."""

    id: str
    check: Check
    expectation: Expectation
    constraint: Constraint

    @property
    def check_part(self) -> str:
        """The start of the id that names what is ablated (``conv5-u245``)."""
        return self.id.removesuffix(f"-{self.constraint.kind}").rsplit("-", 1)[0]

    @property
    def line(self) -> int:
        """1-based spec line of the constraint."""
        return self.constraint.line or self.expectation.line or self.check.line


def _all_items(spec: Spec) -> list[ItemKey]:
    items = []
    for check in spec.checks:
        head = check_label(spec, check)
        for expectation in check.expectations:
            label = target_label(spec, expectation.target)
            for constraint in expectation.constraints:
                items.append(ItemKey(f"{head}-{label}-{constraint.kind}", check,
                                     expectation, constraint))
    return items


def duplicate_problems(spec: Spec) -> list[tuple[int, str]]:
    """``(line, message)`` for every item whose id an earlier item already has."""
    seen: dict[str, int] = {}
    out = []
    for key in _all_items(spec):
        if key.id in seen:
            out.append((key.line, f"test id {key.id!r} repeats the one at line {seen[key.id]} "
                        f"(a duplicated check or expectation); remove one or give a check "
                        f"a distinct 'name:'"))
        else:
            seen[key.id] = key.line
    return out


def item_ids(spec: Spec) -> list[ItemKey]:
    """The spec's items in file order (deterministic; ids unique for a loaded spec)."""
    return _all_items(spec)
