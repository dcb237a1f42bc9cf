"""Load and validate a spec file into :class:`~pytest_unitablate.spec_model.Spec` (torch-free).

Every problem is collected, not just the first, and each says ``path:line: message`` with
the line of the offending key or value, a "did you mean" for misspelt keys and classes, and
how to fix it. Nothing is executed and the file is only read.

The tables of allowed keys below are the single source of truth: the validator walks them
and :mod:`pytest_unitablate.spec.schema` generates the JSON Schema from them.

Example::

    >>> spec = load_spec("s.yaml", text='''
    ... unitablate: 1
    ... model: my_model
    ... data: my_data
    ... checks:
    ...   - layer: conv5
    ...     units: [245]
    ...     expect:
    ...       7: {min_drop: 20%}
    ... ''')
    >>> spec.checks[0].units, spec.checks[0].expectations[0].constraints[0].threshold
    ((245,), 0.2)
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from pytest_unitablate.errors import Problem, SpecError
from pytest_unitablate.spec.model import (
    CONSTRAINT_KINDS,
    DEFAULT_MIN_SIMILARITY,
    FORMAT_VERSION,
    OVERALL,
    Ablation,
    Check,
    CheckMode,
    Constraint,
    ConstraintKind,
    Expectation,
    IdentityKind,
    Mark,
    Spec,
)
from pytest_unitablate.spec.yaml_lines import YNode, parse_yaml

# --- the format's tables (also read by spec_schema) ---------------------------------------

TOP_KEYS: dict[str, str] = {
    "unitablate": "format version, required: 1",
    "model": "pytest fixture name or 'package.module:callable' returning the model",
    "data": "fixture name or 'package.module:callable': (inputs, labels) batches or a Dataset",
    "classes": "optional list of class names, index order",
    "ablation": "zero | mean | {constant: <number>}; default zero",
    "checks": "list of checks, required",
    "ranking_data": "optional separate split used to rank units for top_units",
    "channel_dim": "channel dimension of layer outputs, default 1",
    "min_examples": "minimum examples a class target needs, default 1",
    "output": "which part of the model's output holds the logits: an index into a tuple "
              "or list output, or a key of a dict (or attribute of a ModelOutput)",
    "provenance": "written by record mode: environment of the recorded numbers",
    "signatures": "written by record mode: {file: <sidecar next to the spec>, sha256: <hash>} "
                  "of the signatures that identity: signature checks match",
}
SIGNATURES_KEYS: dict[str, str] = {
    "file": "the sidecar's file name, relative to the spec (default <stem>.signatures.json)",
    "sha256": "sha256 of the sidecar file as record mode wrote it",
}
REQUIRED_TOP = ("unitablate", "model", "data", "checks")
CHECK_KEYS: dict[str, str] = {
    "layer": "dotted module name from model.named_modules()",
    "units": "list of 0-based unit indices, ablated together",
    "any_unit": "layer-wide: at least `at_least` single units meet `expect`",
    "every_unit": "layer-wide: every single unit meets `expect`",
    "top_units": "ablate together the k units most damaging to `class`",
    "expect": "targets (class name, class index or overall) -> constraints",
    "ablation": "override of the spec's ablation for this check",
    "marks": "pytest marks: [xfail] or [{skipif: {condition: ..., reason: ...}}]",
    "name": "optional label used in the test id instead of layer-u<units>",
    "identity": "what a named unit is: index (default) or signature (found again by its "
                "recorded signature after a retrain); or {by: signature, min_similarity: 0.75}",
}
IDENTITY_KEYS: dict[str, str] = {
    "by": "index or signature",
    "min_similarity": "below this cosine similarity no unit matches (default 0.75)",
}
IDENTITY_KINDS = ("index", "signature")
MODE_KEYS: tuple[CheckMode, ...] = ("units", "any_unit", "every_unit", "top_units")
LAYER_WIDE_KEYS: dict[str, dict[str, str]] = {
    "any_unit": {"expect": "targets -> constraints", "at_least": "how many units, default 1"},
    "every_unit": {"expect": "targets -> constraints"},
    "top_units": {
        "k": "number of units to ablate together",
        "class": "the class whose most damaging units are chosen",
        "expect": "targets -> constraints",
    },
}
TARGET_KEYS: dict[str, str] = {
    "min_drop": "the drop must be at least this many percentage points, e.g. 20%",
    "max_drop": "the drop must be at most this many percentage points, e.g. 1%",
    "min_relative_drop": "drop / baseline must be at least this, e.g. 50%",
    "max_relative_drop": "drop / baseline must be at most this",
    "warn_margin": "warn (but pass) when within this many points of failing",
    "confidence": "judge the bound of this confidence interval, e.g. 95%",
}
ABLATION_NAMES = ("zero", "mean")
PERCENT = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*%\s*$")
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*$")
IDENT = re.compile(r"^[A-Za-z_]\w*$")
ID_SAFE = re.compile(r"^(?!.*::)[\w:+\-.]+$")


def closest(name: str, candidates: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """The candidates closest to ``name`` (difflib), for "did you mean".

    >>> closest("min_dorp", ["min_drop", "max_drop"])
    ['min_drop', 'max_drop']
    """
    return difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.5)


def _did_you_mean(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    hints = closest(name, candidates)
    return f"; did you mean {' or '.join(repr(h) for h in hints)}?" if hints else ""


def is_spec_file(path: str | os.PathLike[str]) -> bool:
    """Cheap check: a ``.yaml``/``.yml`` file with a top-level ``unitablate:`` key.

    Reads at most 8 KiB; never parses the whole file.
    """
    p = Path(path)
    if p.suffix not in (".yaml", ".yml") or not p.is_file():
        return False
    try:
        with p.open("r", encoding="utf-8", errors="replace") as fh:
            head = fh.read(8192)
    except OSError:
        return False
    return re.search(r"^unitablate\s*:", head, re.MULTILINE) is not None


class _Validator:
    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []

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
                    f"unknown key {key.value!r} in {where}{_did_you_mean(key.value, names)} "
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
                value = float(m.group(1)) / 100.0
                if not -1.0 <= value <= 1.0:
                    self.err(node.line, f"{what} {node.value} is outside -100%..100%")
                    return False, None
                return True, value
        if node.kind == "scalar" and isinstance(node.value, (int, float)) and not isinstance(
            node.value, bool
        ):
            v = node.value
            self.err(
                node.line,
                f"{what} is a bare number ({v!r}); write it as a percentage with a % sign, "
                f"e.g. '{what.split()[-1]}: {v if abs(v) > 1 else v * 100:g}%' "
                f"(percentage points; 20% means 20 pp)",
            )
            return False, None
        null_hint = " or null (to be filled by record mode)" if allow_null else ""
        self.err(node.line, f"{what} must be a percentage like 20%{null_hint}, got "
                 f"{node.describe()}")
        return False, None

    # --- nodes --------------------------------------------------------------------------

    def ablation(self, node: YNode | None) -> Ablation | None:
        if node is None:
            return None
        if node.kind == "scalar" and node.value in ABLATION_NAMES:
            return Ablation(kind=node.value, line=node.line)
        if node.kind == "map":
            self.keys(node, ("constant",), "ablation")
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
            if const is None and not node.entries:
                self.err(node.line, "ablation mapping is empty; write {constant: 0.5}")
            return None
        hint = _did_you_mean(str(node.value), ABLATION_NAMES) if node.kind == "scalar" else ""
        self.err(node.line, f"ablation must be zero, mean or {{constant: <number>}}, got "
                 f"{node.describe()}{hint}")
        return None

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
        if classes is None:
            self.err(key.line, f"target {value!r} is a class name but the spec has no "
                     f"'classes:' list; add one, or use a class index or 'overall'")
            return None
        if value not in classes:
            self.err(key.line, f"unknown class {value!r}"
                     f"{_did_you_mean(value, [*classes, OVERALL])}")
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
                ok, v = self.percent(cval, kind, allow_null=True)
                if not ok:
                    continue
                if v is not None:
                    bounds[kind] = v
                constraints.append(Constraint(
                    kind=kind, threshold=v, line=ckey.line,
                    warn_margin=extras.get("warn_margin"), confidence=extras.get("confidence"),
                ))
            if not constraints and not any(
                k.value in CONSTRAINT_KINDS for k in body.key_nodes()
            ):
                self.err(body.line, f"target {key.value!r} has no threshold; give one of "
                         f"{', '.join(CONSTRAINT_KINDS)}")
            for lo, hi in (("min_drop", "max_drop"), ("min_relative_drop", "max_relative_drop")):
                if lo in bounds and hi in bounds and bounds[lo] > bounds[hi]:
                    self.err(body.line, f"target {key.value!r}: {lo} {bounds[lo] * 100:g}% is "
                             f"greater than {hi} {bounds[hi] * 100:g}%, so nothing can pass")
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
                    kwargs = tuple((str(k.value), _plain(v)) for k, v in value.entries)
                elif value.kind == "seq":
                    args = tuple(_plain(v) for v in value.items)
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
            hint = _did_you_mean(str(by.value), IDENTITY_KINDS) if by.kind == "scalar" else ""
            self.err(by.line, f"identity must be index or signature, got {by.describe()}{hint}")
            return "index", DEFAULT_MIN_SIMILARITY
        kind: IdentityKind = by.value
        if kind == "signature" and mode != "units":
            self.err(by.line, f"identity: signature is for named units (units: [...]); the "
                     f"layer-wide {mode} already looks at every unit of the layer")
        return kind, minimum

    def signatures(self, node: YNode | None) -> tuple[str | None, str | None]:
        """``signatures: {file: x.signatures.json, sha256: <hex>}`` (record mode writes it)."""
        if node is None:
            return None, None
        if node.kind != "map":
            self.err(node.line, f"signatures must be a mapping {{file: ..., sha256: ...}}, "
                     f"got {node.describe()}")
            return None, None
        self.keys(node, SIGNATURES_KEYS, "signatures")
        file_node = node.get("file")
        file = self.string(file_node, "signatures file")
        if file_node is not None and file is not None and (
                Path(file).is_absolute() or ".." in Path(file).parts):
            self.err(file_node.line,
                     f"signatures file {file!r} must be a plain path next to the spec")
            file = None
        digest = self.string(node.get("sha256"), "signatures sha256",
                             re.compile(r"^[0-9a-f]{64}$"), " (64 hex digits)")
        return file, digest

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
        if layer is None:
            return None
        return Check(
            layer=layer, mode=mode, expectations=expectations, line=node.line,
            layer_line=layer_node.line if layer_node else node.line, units=units,
            at_least=at_least, top_units=top_k, top_class=top_class,
            ablation=self.ablation(node.get("ablation")), marks=self.marks(node.get("marks")),
            name=name, index=index, identity=identity, min_similarity=min_similarity,
            identity_line=identity_node.line if identity_node is not None else 0,
        )

    def spec(self, root: YNode, path: Path) -> Spec | None:
        if root.kind != "map":
            self.err(root.line, f"a spec must be a mapping starting with 'unitablate: "
                     f"{FORMAT_VERSION}', got {root.describe()}")
            return None
        self.keys(root, TOP_KEYS, "the spec")
        for key in REQUIRED_TOP:
            if root.get(key) is None and not any(k.value == key for k in root.key_nodes()):
                self.err(1, f"missing required key {key!r} ({TOP_KEYS[key]})")
        version_node = root.get("unitablate")
        version = self.integer(version_node, "unitablate (the format version)")
        if version is not None and version != FORMAT_VERSION:
            assert version_node is not None
            self.err(version_node.line, f"format version {version} is not supported; this "
                     f"pytest-unitablate reads version {FORMAT_VERSION}")
        ref_hint = " (a fixture name, or 'package.module:callable')"
        ref = re.compile(f"{IDENT.pattern}|{IMPORT_PATH.pattern}")
        model = self.string(root.get("model"), "model", ref, ref_hint)
        data = self.string(root.get("data"), "data", ref, ref_hint)
        ranking = self.string(root.get("ranking_data"), "ranking_data", ref, ref_hint)
        classes: tuple[str, ...] | None = None
        cnode = root.get("classes")
        if cnode is not None:
            if cnode.kind != "seq" or not cnode.items:
                self.err(cnode.line, f"classes must be a non-empty list of names, got "
                         f"{cnode.describe()}")
            else:
                names: list[str] = []
                slugs: dict[str, str] = {}
                for item in cnode.items:
                    if item.kind != "scalar" or not isinstance(item.value, str) or not item.value:
                        self.err(item.line, f"a class name must be a non-empty string, got "
                                 f"{item.describe()}")
                        names.append(f"<bad {len(names)}>")
                        continue
                    if item.value == OVERALL:
                        self.err(item.line, "'overall' is reserved; it cannot be a class name")
                    if item.value in names:
                        self.err(item.line, f"class {item.value!r} is listed twice")
                    from pytest_unitablate.spec.ids import slug

                    s = slug(item.value)
                    if s in slugs and slugs[s] != item.value:
                        self.err(item.line, f"classes {slugs[s]!r} and {item.value!r} give the "
                                 f"same test id {s!r}; rename one")
                    slugs[s] = item.value
                    names.append(item.value)
                classes = tuple(names)
        ablation = self.ablation(root.get("ablation")) or Ablation()
        channel_dim = self.integer(root.get("channel_dim"), "channel_dim")
        min_examples = self.integer(root.get("min_examples"), "min_examples", minimum=1)
        output = self.output(root.get("output"))
        provenance: tuple[tuple[str, str], ...] = ()
        pnode = self.expect_map(root.get("provenance"), root.line, "provenance")
        if pnode is not None:
            provenance = tuple((str(k.value), str(v.value)) for k, v in pnode.entries)
        sig_file, sig_sha = self.signatures(root.get("signatures"))
        checks: list[Check] = []
        chk = root.get("checks")
        if chk is not None:
            if chk.kind != "seq":
                self.err(chk.line, f"checks must be a list, got {chk.describe()}")
            elif not chk.items:
                self.err(chk.line, "checks is empty: a spec must yield at least one test")
            else:
                for i, item in enumerate(chk.items):
                    c = self.check(i, item, classes)
                    if c is not None:
                        checks.append(c)
        if self.problems or model is None or data is None:
            return None
        def line_of(key: str) -> int:
            found = root.get(key)
            return found.line if found is not None else 0

        spec = Spec(
            path=path, version=FORMAT_VERSION, model=model, data=data, checks=tuple(checks),
            model_line=line_of("model"), data_line=line_of("data"),
            classes=classes, classes_line=cnode.line if cnode else 0, ablation=ablation,
            ranking_data=ranking,
            ranking_data_line=line_of("ranking_data"),
            channel_dim=1 if channel_dim is None else channel_dim,
            min_examples=min_examples or 1, provenance=provenance,
            output=output, output_line=line_of("output"),
            signatures=sig_file, signatures_sha256=sig_sha,
            signatures_line=line_of("signatures"),
        )
        from pytest_unitablate.spec.ids import duplicate_problems

        for line, message in duplicate_problems(spec):
            self.err(line, message)
        return None if self.problems else spec


def _plain(node: YNode) -> object:
    if node.kind == "map":
        return {str(k.value): _plain(v) for k, v in node.entries}
    if node.kind == "seq":
        return [_plain(v) for v in node.items]
    return node.value


def load_spec(path: str | os.PathLike[str], *, text: str | None = None) -> Spec:
    """Read and validate the spec at ``path`` (or ``text``, reported as ``path``).

    Raises :class:`~pytest_unitablate.errors.SpecError` with every problem found.
    """
    p = Path(path)
    shown = str(path)
    if text is None:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError([Problem(shown, 0, f"cannot read the spec: {exc}")]) from None
    root, problems = parse_yaml(text, shown)
    validator = _Validator(shown)
    validator.problems.extend(problems)
    spec = validator.spec(root, p) if root is not None else None
    if validator.problems or spec is None:
        ordered = sorted(dict.fromkeys(validator.problems), key=lambda pr: pr.line)
        raise SpecError(ordered or [Problem(shown, 0, "invalid spec")])
    return spec

