r"""Reading one entry of ``checks:``: its layer and units, its mode, its expectations and
their constraints, its marks and its unit identity (torch-free).

Example::

    >>> from pytest_unitablate.spec.yaml_lines import parse_yaml
    >>> node, _ = parse_yaml("layer: conv5\nunits: [3]\nexpect: {overall: {max_drop: 1%}}\n",
    ...                      "s.yaml")
    >>> check = Checks("s.yaml").check(0, node, None)
    >>> check.layer, check.units, check.expectations[0].constraints[0].kind
    ('conv5', (3,), 'max_drop')
"""

from __future__ import annotations

from pytest_unitablate.spec.fields import Fields, did_you_mean, plain
from pytest_unitablate.spec.keys import (
    CHECK_KEYS,
    ID_SAFE,
    IDENT,
    IDENTITY_KEYS,
    IDENTITY_KINDS,
    LAYER_WIDE_KEYS,
    MODE_KEYS,
    REFERENCE,
    TARGET_KEYS,
    UNIT_KINDS,
)
from pytest_unitablate.spec.model import (
    CONSTRAINT_KINDS,
    DEFAULT_MIN_SIMILARITY,
    LOGPROB_KINDS,
    OVERALL,
    Check,
    CheckMode,
    Constraint,
    ConstraintKind,
    Expectation,
    IdentityKind,
    Mark,
    UnitKind,
)
from pytest_unitablate.spec.yaml_lines import YNode


class Checks(Fields):
    """The entries of ``checks:``; problems accumulate in :attr:`problems`."""

    #: the spec's own ``unit:`` (a check without one inherits it)
    spec_unit: str = "channel"
    #: the names of ``data:``'s groups, which are targets too
    groups: tuple[str, ...] = ()

    def target(self, key: YNode, classes: tuple[str, ...] | None) -> str | int | None:
        value = key.value
        if isinstance(value, bool) or key.kind != "scalar":
            self.err(key.line, f"an expect target must be a class name, a class index or "
                     f"'overall', got {key.describe()}")
            return None
        if isinstance(value, int):
            if value < 0:
                self.err(key.line, f"class index {value} is negative; classes count from 0")
                return None
            if classes is not None and value >= len(classes):
                self.err(key.line, f"class index {value} is out of range: classes lists "
                         f"{len(classes)} names (0..{len(classes) - 1})")
                return None
            return value
        if not isinstance(value, str):
            self.err(key.line, f"an expect target must be a class name, a class index or "
                     f"'overall', got {key.describe()}")
            return None
        if value == OVERALL:
            return OVERALL
        if value in self.groups:
            return value
        if classes is None:
            if self.groups:
                self.err(key.line, f"unknown target {value!r}: a target is one of data's "
                         f"groups ({', '.join(self.groups)}), a class index or 'overall'"
                         f"{did_you_mean(value, [*self.groups, OVERALL])}")
                return None
            self.err(key.line, f"target {value!r} is a class name but the spec has no "
                     f"'classes:' list; add one, or use a class index or 'overall'")
            return None
        if value not in classes:
            self.err(key.line, f"unknown class {value!r}"
                     f"{did_you_mean(value, [*classes, *self.groups, OVERALL])}")
            return None
        return value

    def expectations(self, node: YNode | None, line: int, where: str,
                     classes: tuple[str, ...] | None) -> tuple[Expectation, ...]:
        if node is None:
            self.err(line, f"{where} has no 'expect:' mapping of targets to thresholds")
            return ()
        mapping = self.expect_map(node, line, f"{where}: expect")
        if mapping is None:
            return ()
        if not mapping.entries:
            self.err(mapping.line, f"{where}: expect is empty; give at least one target")
            return ()
        out: list[Expectation] = []
        seen: dict[str | int, int] = {}
        for key, value in mapping.entries:
            target = self.target(key, classes)
            body = self.expect_map(value, key.line, f"target {key.value!r}")
            if body is None:
                continue
            # a bad target still has its thresholds checked: every problem on a line at once
            if target is not None:
                canonical: str | int = target
                if isinstance(target, int) and classes is not None:
                    canonical = classes[target]
                if canonical in seen:
                    self.err(key.line, f"target {key.value!r} is the same class as the target "
                             f"at line {seen[canonical]}; merge them")
                    continue
                seen[canonical] = key.line
            self.keys(body, TARGET_KEYS, f"target {key.value!r}")
            extras: dict[str, float | None] = {}
            for extra in ("warn_margin", "confidence"):
                n = body.get(extra)
                if n is not None:
                    ok, v = self.percent(n, extra)
                    if ok and v is not None and extra == "confidence" and not 0.5 <= v < 1.0:
                        self.err(n.line, f"confidence must be between 50% and 99.99%, got "
                                 f"{n.value}")
                        v = None
                    if ok and v is not None and extra == "warn_margin" and v < 0:
                        self.err(n.line, "warn_margin must not be negative")
                        v = None
                    extras[extra] = v
            constraints: list[Constraint] = []
            bounds: dict[str, float] = {}
            for ckey, cval in body.entries:
                if ckey.value not in CONSTRAINT_KINDS:
                    continue
                kind: ConstraintKind = ckey.value
                logprob = kind in LOGPROB_KINDS
                ok, v = (self.nats if logprob else self.percent)(cval, kind, allow_null=True)
                if not ok:
                    continue
                if v is not None:
                    bounds[kind] = v
                constraints.append(Constraint(
                    kind=kind, threshold=v, line=ckey.line,
                    warn_margin=None if logprob else extras.get("warn_margin"),
                    confidence=extras.get("confidence"),
                    measured=self.recorded_measure(ckey.line) if sum(
                        k.line == ckey.line and k.value in CONSTRAINT_KINDS
                        for k in body.key_nodes()) == 1 else None,
                ))
            if not constraints and not any(
                k.value in CONSTRAINT_KINDS for k in body.key_nodes()
            ):
                self.err(body.line, f"target {key.value!r} has no threshold; give one of "
                         f"{', '.join(CONSTRAINT_KINDS)}")
            for lo, hi in (("min_drop", "max_drop"), ("min_relative_drop", "max_relative_drop"),
                           ("min_logprob_drop", "max_logprob_drop")):
                if lo in bounds and hi in bounds and bounds[lo] > bounds[hi]:
                    scale, sign = (1, "") if lo in LOGPROB_KINDS else (100, "%")
                    self.err(body.line, f"target {key.value!r}: {lo} {bounds[lo] * scale:g}"
                             f"{sign} is greater than {hi} {bounds[hi] * scale:g}{sign}, so "
                             f"nothing can pass")
            if target is not None:
                out.append(Expectation(target=target, constraints=tuple(constraints),
                                       line=key.line))
        return tuple(out)

    def marks(self, node: YNode | None) -> tuple[Mark, ...]:
        if node is None:
            return ()
        items = node.items if node.kind == "seq" else [node]
        marks: list[Mark] = []
        for item in items:
            if item.kind == "scalar" and isinstance(item.value, str) and IDENT.match(item.value):
                marks.append(Mark(name=item.value, line=item.line))
            elif item.kind == "map" and len(item.entries) == 1:
                key, value = item.entries[0]
                if not (isinstance(key.value, str) and IDENT.match(key.value)):
                    self.err(key.line, f"mark name {key.value!r} is not an identifier")
                    continue
                args: tuple[object, ...] = ()
                kwargs: tuple[tuple[str, object], ...] = ()
                if value.kind == "map":
                    kwargs = tuple((str(k.value), plain(v)) for k, v in value.entries)
                elif value.kind == "seq":
                    args = tuple(plain(v) for v in value.items)
                elif value.value is not None:
                    args = (value.value,)
                marks.append(Mark(name=key.value, args=args, kwargs=kwargs, line=key.line))
            else:
                self.err(item.line, f"a mark must be a name like xfail or a one-key mapping "
                         f"like {{xfail: {{reason: ...}}}}, got {item.describe()}")
        return tuple(marks)

    def identity(self, node: YNode | None, mode: CheckMode) -> tuple[IdentityKind, float]:
        """``identity: signature`` or ``identity: {by: signature, min_similarity: 0.8}``."""
        if node is None:
            return "index", DEFAULT_MIN_SIMILARITY
        by, threshold = node, None
        if node.kind == "map":
            self.keys(node, IDENTITY_KEYS, "identity")
            by = node.get("by") or node
            threshold = node.get("min_similarity")
            if node.get("by") is None:
                self.err(node.line, "identity mapping needs 'by:' (index or signature)")
                return "index", DEFAULT_MIN_SIMILARITY
        minimum = DEFAULT_MIN_SIMILARITY
        if threshold is not None:
            v = threshold.value
            if threshold.kind != "scalar" or isinstance(v, bool) or not isinstance(
                    v, (int, float)) or not -1.0 <= v <= 1.0:
                self.err(threshold.line, f"min_similarity must be a number between -1 and 1 "
                         f"(a cosine similarity, e.g. 0.75), got {threshold.describe()}")
            else:
                minimum = float(v)
        if by.kind != "scalar" or by.value not in IDENTITY_KINDS:
            hint = did_you_mean(str(by.value), IDENTITY_KINDS) if by.kind == "scalar" else ""
            self.err(by.line, f"identity must be index or signature, got {by.describe()}{hint}")
            return "index", DEFAULT_MIN_SIMILARITY
        kind: IdentityKind = by.value
        if kind == "signature" and mode != "units":
            self.err(by.line, f"identity: signature is for named units (units: [...]); the "
                     f"layer-wide {mode} already looks at every unit of the layer")
        return kind, minimum

    def check(self, index: int, node: YNode, classes: tuple[str, ...] | None) -> Check | None:
        where = f"check #{index + 1}"
        if node.kind != "map":
            self.err(node.line, f"{where} must be a mapping with 'layer:' and 'units:' (or "
                     f"any_unit/every_unit/top_units), got {node.describe()}")
            return None
        self.keys(node, CHECK_KEYS, where)
        layer_node = node.get("layer")
        if layer_node is None:
            self.err(node.line, f"{where} has no 'layer:' (a dotted module name such as "
                     f"layer4.1.conv2)")
        layer = self.string(layer_node, "layer")
        modes = [k for k in MODE_KEYS if node.get(k) is not None]
        if len(modes) != 1:
            self.err(node.line, f"{where} needs exactly one of units, any_unit, every_unit, "
                     f"top_units; got {', '.join(modes) if modes else 'none'}")
            return None
        mode = modes[0]
        units: tuple[int, ...] = ()
        at_least, top_k, top_class = 1, None, None
        expect_node = node.get("expect")
        expect_line = node.line
        if mode == "units":
            unode = node.get("units")
            assert unode is not None
            raw = unode.items if unode.kind == "seq" else [unode]
            if unode.kind == "seq" and not raw:
                self.err(unode.line, "units is empty; list at least one 0-based unit index")
            values: list[int] = []
            for item in raw:
                v = self.integer(item, "a unit index", minimum=0)
                if v is not None:
                    if v in values:
                        self.err(item.line, f"unit {v} is listed twice")
                    else:
                        values.append(v)
            units = tuple(values)
        else:
            body = self.expect_map(node.get(mode), node.line, mode)
            if body is None:
                return None
            self.keys(body, LAYER_WIDE_KEYS[mode], mode)
            misplaced = node.get("expect")
            if misplaced is not None:
                self.err(misplaced.line, f"for {mode}, put 'expect:' inside '{mode}:'")
            expect_node, expect_line = body.get("expect"), body.line
            if mode == "any_unit" and body.get("at_least") is not None:
                at_least = self.integer(body.get("at_least"), "at_least", minimum=1) or 1
            if mode == "top_units":
                if body.get("k") is None:
                    self.err(body.line, "top_units needs 'k:' (how many units)")
                top_k = self.integer(body.get("k"), "top_units k", minimum=1)
                cnode = body.get("class")
                if cnode is None:
                    self.err(body.line, "top_units needs 'class:' (whose units to rank)")
                else:
                    top_class = self.target(cnode, classes)
                    if top_class == OVERALL:
                        self.err(cnode.line, "top_units ranks units by one class; 'overall' "
                                 "is not a class")
                        top_class = None
        if mode == "units" and expect_node is None:
            self.err(node.line, f"{where} has no 'expect:' mapping of targets to thresholds")
            expectations: tuple[Expectation, ...] = ()
        else:
            expectations = self.expectations(expect_node, expect_line, where, classes)
        name_node = node.get("name")
        name = self.string(name_node, "name", ID_SAFE,
                           " in a test id: use letters, digits and _ - . : +"
                           " (no brackets, no '::')")
        identity_node = node.get("identity")
        identity, min_similarity = self.identity(identity_node, mode)
        unit = self.unit_kind(node.get("unit"))
        heads_node = node.get("num_heads")
        num_heads = self.integer(heads_node, "num_heads", minimum=1)
        if heads_node is not None and (unit or self.spec_unit) != "head":
            self.err(heads_node.line, "num_heads is for a check with unit: head")
        dim_node = node.get("channel_dim")
        if dim_node is not None and unit == "head":
            self.err(dim_node.line, "channel_dim is for channels; a head check's units are "
                     "the heads (of the projection's input features): remove channel_dim")
        ref_node = node.get("reference")
        reference = self.string(ref_node, "reference", REFERENCE,
                                " (a fixture name, or 'package.module:callable')")
        if layer is None:
            return None
        return Check(
            layer=layer, mode=mode, expectations=expectations, line=node.line,
            layer_line=layer_node.line if layer_node else node.line, units=units,
            at_least=at_least, top_units=top_k, top_class=top_class,
            ablation=self.ablation(node.get("ablation")), marks=self.marks(node.get("marks")),
            name=name, index=index, identity=identity, min_similarity=min_similarity,
            identity_line=identity_node.line if identity_node is not None else 0,
            channel_dim=self.integer(node.get("channel_dim"), "channel_dim"),
            unit=unit, num_heads=num_heads, reference=reference,
            reference_line=ref_node.line if ref_node is not None else 0,
            position=self.position(node.get("position")),
        )

    def unit_kind(self, node: YNode | None) -> UnitKind | None:
        """``unit: channel`` or ``unit: head``."""
        if node is None:
            return None
        if node.kind == "scalar" and node.value in UNIT_KINDS:
            kind: UnitKind = node.value
            return kind
        hint = did_you_mean(str(node.value), UNIT_KINDS) if node.kind == "scalar" else ""
        self.err(node.line, f"unit must be channel or head, got {node.describe()}{hint}")
        return None


__all__ = ["Checks"]
