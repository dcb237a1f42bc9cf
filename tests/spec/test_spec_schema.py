"""The shipped JSON Schema equals the generated one and agrees with the loader."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

import pytest_unitablate
from pytest_unitablate.spec.schema import render

CORPUS = Path(__file__).parent / "corpus"
SHIPPED = Path(pytest_unitablate.__file__).parent / "spec.schema.json"
ROOT = Path(__file__).parents[2]

# Problems only the loader can see (cross-references, duplicates, ranges, tags, syntax).
SEMANTIC = {
    "class_index_out_of_range", "unknown_class", "misspelt_class", "duplicate_check",
    "same_class_twice", "min_above_max", "percent_out_of_range", "duplicate_class",
    "class_name_without_classes", "confidence_out_of_range", "duplicate_key", "duplicate_unit",
    "python_tag", "yaml_syntax", "empty_file", "fraction_number", "bare_number",
    "wrong_version", "any_unit_bad_at_least", "negative_unit", "num_heads_without_heads",
}


def test_shipped_schema_is_the_generated_one() -> None:
    assert SHIPPED.read_text() == render(), (
        "regenerate: python -m pytest_unitablate.spec.schema > pytest_unitablate/spec.schema.json")


def test_good_specs_validate() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SHIPPED.read_text()))
    good = sorted((CORPUS / "good").glob("*.yaml"))
    for path in [*good, *sorted((ROOT / "specs").glob("*.yaml"))]:
        validator.validate(yaml.safe_load(path.read_text()))


STRUCTURAL = [p for p in sorted((CORPUS / "bad").glob("*.yaml")) if p.stem not in SEMANTIC]


@pytest.mark.parametrize("path", STRUCTURAL, ids=lambda p: p.stem)
def test_structural_problems_fail_the_schema(path: Path) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SHIPPED.read_text()))
    doc = yaml.safe_load(path.read_text())
    assert list(validator.iter_errors(doc)), f"{path.name} passes the schema"
