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

import os
import re
from pathlib import Path

from pytest_unitablate.errors import Problem, SpecError
from pytest_unitablate.spec.checks import Checks
from pytest_unitablate.spec.keys import (
    IDENT,
    IMPORT_PATH,
    REQUIRED_TOP,
    SIGNATURES_KEYS,
    TOP_KEYS,
)
from pytest_unitablate.spec.model import (
    FORMAT_VERSION,
    OVERALL,
    Ablation,
    Check,
    Spec,
)
from pytest_unitablate.spec.yaml_lines import YNode, parse_yaml


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


class _Validator(Checks):
    """The spec's top level (its checks through :class:`Checks`)."""

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
        data, groups = self.data_source(root.get("data"), "data", ref, ref_hint)
        ranking, ranking_groups = self.data_source(root.get("ranking_data"), "ranking_data",
                                                   ref, ref_hint)
        self.groups = tuple(name for name, _ in groups)
        if ranking_groups and tuple(n for n, _ in ranking_groups) != self.groups:
            node = root.get("ranking_data")
            self.err(node.line if node else 1,
                     f"ranking_data's groups ({', '.join(n for n, _ in ranking_groups)}) must "
                     f"be data's ({', '.join(self.groups) or 'none: data is not grouped'}), "
                     f"in the same order")
        position = self.position(root.get("position"))
        reference = self.string(root.get("reference"), "reference", ref, ref_hint)
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
                clash = sorted(set(classes) & set(self.groups))
                if clash:
                    self.err(cnode.line, f"{', '.join(map(repr, clash))} names both a class "
                             f"and a data group; a target must name one of them: rename one")
        ablation = self.ablation(root.get("ablation")) or Ablation()
        channel_dim = self.integer(root.get("channel_dim"), "channel_dim")
        spec_unit = self.unit_kind(root.get("unit")) or "channel"
        self.spec_unit = spec_unit
        num_heads = self.integer(root.get("num_heads"), "num_heads", minimum=1)
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
        heads_node = root.get("num_heads")
        if heads_node is not None and spec_unit != "head" and \
                not any(c.unit == "head" for c in checks):
            self.err(heads_node.line, "num_heads is for unit: head checks, and this spec has "
                     "none: remove it, or say unit: head")
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
            channel_dim=channel_dim, unit=spec_unit, num_heads=num_heads, position=position,
            position_line=line_of("position"),
            groups=groups, ranking_groups=ranking_groups,
            min_examples=min_examples or 1, provenance=provenance,
            output=output, output_line=line_of("output"),
            signatures=sig_file, signatures_sha256=sig_sha,
            signatures_line=line_of("signatures"),
            reference=reference, reference_line=line_of("reference"),
        )
        from pytest_unitablate.spec.ids import duplicate_problems

        for line, message in duplicate_problems(spec):
            self.err(line, message)
        return None if self.problems else spec


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
    validator.source_lines = text.splitlines()
    validator.problems.extend(problems)
    spec = validator.spec(root, p) if root is not None else None
    if validator.problems or spec is None:
        ordered = sorted(dict.fromkeys(validator.problems), key=lambda pr: pr.line)
        raise SpecError(ordered or [Problem(shown, 0, "invalid spec")])
    return spec

