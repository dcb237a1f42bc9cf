"""JSON Schema (draft 2020-12) of the spec format, generated from the loader's own tables.

The allowed keys and their descriptions come from :mod:`pytest_unitablate.spec.loader`, so
the schema and the validator cannot drift apart. The package ships the result as
``pytest_unitablate/spec.schema.json``; regenerate it with::

    python -m pytest_unitablate.spec.schema > pytest_unitablate/spec.schema.json

Example::

    >>> schema = build_schema()
    >>> sorted(schema["required"])
    ['checks', 'data', 'model', 'unitablate']
"""

from __future__ import annotations

import json
from typing import Any

from pytest_unitablate.spec.keys import (
    CHECK_KEYS,
    IDENTITY_KEYS,
    IDENTITY_KINDS,
    LAYER_WIDE_KEYS,
    MODE_KEYS,
    REQUIRED_TOP,
    SIGNATURES_KEYS,
    TARGET_KEYS,
    TOP_KEYS,
    UNIT_KINDS,
)
from pytest_unitablate.spec.model import CONSTRAINT_KINDS, FORMAT_VERSION, LOGPROB_KINDS

PERCENT_PATTERN = r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*%\s*$"
REF_PATTERN = r"^([A-Za-z_]\w*|[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)$"


def _percent(description: str, nullable: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "pattern": PERCENT_PATTERN,
                              "description": description}
    if nullable:
        return {"description": description,
                "oneOf": [{"type": "string", "pattern": PERCENT_PATTERN}, {"type": "null"}]}
    return schema


def build_schema() -> dict[str, Any]:
    """The schema as a dict."""
    target = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            key: {"description": desc, "type": ["number", "null"]} if key in LOGPROB_KINDS
            else _percent(desc, nullable=key in CONSTRAINT_KINDS)
            for key, desc in TARGET_KEYS.items()
        },
        "anyOf": [{"required": [k]} for k in CONSTRAINT_KINDS],
    }
    expect = {"type": "object", "minProperties": 1,
              "additionalProperties": {"$ref": "#/$defs/target"},
              "description": "class name, class index or 'overall' -> constraints"}
    ablation = {"oneOf": [
        {"enum": ["zero", "mean", "resample"]},
        {"type": "object", "additionalProperties": False, "required": ["constant"],
         "properties": {"constant": {"type": "number"}}},
        {"type": "object", "additionalProperties": False, "required": ["resample"],
         "properties": {"resample": {"oneOf": [
             {"type": "null"},
             {"type": "object", "additionalProperties": False,
              "properties": {"draws": {"type": "integer", "minimum": 1}}}]}}},
    ], "description": TOP_KEYS["ablation"]}
    mark = {"oneOf": [
        {"type": "string", "pattern": r"^[A-Za-z_]\w*$"},
        {"type": "object", "minProperties": 1, "maxProperties": 1},
    ]}
    layer_wide: dict[str, Any] = {}
    for mode, keys in LAYER_WIDE_KEYS.items():
        props: dict[str, Any] = {}
        for key, desc in keys.items():
            if key == "expect":
                props[key] = {"$ref": "#/$defs/expect"}
            elif key == "class":
                props[key] = {"type": ["string", "integer"], "description": desc}
            else:
                props[key] = {"type": "integer", "minimum": 1, "description": desc}
        required = ["expect"] + (["k", "class"] if mode == "top_units" else [])
        layer_wide[mode] = {"type": "object", "additionalProperties": False,
                            "properties": props, "required": required}
    check_props: dict[str, Any] = {}
    for key, desc in CHECK_KEYS.items():
        if key == "layer":
            check_props[key] = {"type": "string", "minLength": 1, "description": desc}
        elif key == "units":
            check_props[key] = {"description": desc, "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "array", "minItems": 1, "uniqueItems": True,
                 "items": {"type": "integer", "minimum": 0}}]}
        elif key in layer_wide:
            check_props[key] = {**layer_wide[key], "description": desc}
        elif key == "expect":
            check_props[key] = {"$ref": "#/$defs/expect"}
        elif key == "ablation":
            check_props[key] = {"$ref": "#/$defs/ablation"}
        elif key == "reference":
            check_props[key] = {"type": "string", "pattern": REF_PATTERN, "description": desc}
        elif key == "marks":
            check_props[key] = {"type": "array", "items": mark, "description": desc}
        elif key == "identity":
            kinds = {"enum": list(IDENTITY_KINDS)}
            check_props[key] = {"description": desc, "oneOf": [
                kinds,
                {"type": "object", "additionalProperties": False, "required": ["by"],
                 "properties": {
                     "by": {**kinds, "description": IDENTITY_KEYS["by"]},
                     "min_similarity": {"type": "number", "minimum": -1, "maximum": 1,
                                        "description": IDENTITY_KEYS["min_similarity"]}}}]}
        elif key == "channel_dim":
            check_props[key] = {"type": "integer", "description": desc}
        elif key == "num_heads":
            check_props[key] = {"type": "integer", "minimum": 1, "description": desc}
        elif key == "position":
            check_props[key] = {"description": desc, "oneOf": [{"type": "integer"},
                                                                {"const": "last"}]}
        elif key == "unit":
            check_props[key] = {"enum": list(UNIT_KINDS), "description": desc}
        else:
            check_props[key] = {"type": "string", "pattern": r"^[\w:+\-.\[\]\\/]+$",
                                "description": desc}
    check = {
        "type": "object", "additionalProperties": False, "required": ["layer"],
        "properties": check_props,
        "oneOf": [
            {"required": ["units", "expect"] if m == "units" else [m],
             "not": {"anyOf": [{"required": [o]} for o in MODE_KEYS if o != m]}}
            for m in MODE_KEYS
        ],
    }
    top: dict[str, Any] = {}
    for key, desc in TOP_KEYS.items():
        if key == "unitablate":
            top[key] = {"const": FORMAT_VERSION, "description": desc}
        elif key in ("model", "reference"):
            top[key] = {"type": "string", "pattern": REF_PATTERN, "description": desc}
        elif key in ("data", "ranking_data"):
            ref = {"type": "string", "pattern": REF_PATTERN}
            top[key] = {"description": desc, "oneOf": [ref, {
                "type": "object", "minProperties": 1, "additionalProperties": ref,
                "propertyNames": {"pattern": r"^(?!overall$)(?!.*::)[\w:+\-.]+$"}}]}
        elif key == "position":
            top[key] = {"description": desc, "oneOf": [{"type": "integer"},
                                                       {"const": "last"}]}
        elif key == "classes":
            top[key] = {"type": "array", "minItems": 1, "uniqueItems": True,
                        "items": {"type": "string", "minLength": 1, "not": {"const": "overall"}},
                        "description": desc}
        elif key == "ablation":
            top[key] = {"$ref": "#/$defs/ablation"}
        elif key == "checks":
            top[key] = {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/check"},
                        "description": desc}
        elif key in ("channel_dim", "min_examples"):
            top[key] = {"type": "integer", "description": desc}
        elif key == "num_heads":
            top[key] = {"type": "integer", "minimum": 1, "description": desc}
        elif key == "unit":
            top[key] = {"enum": list(UNIT_KINDS), "description": desc}
        elif key == "signatures":
            top[key] = {"type": "object", "additionalProperties": False, "description": desc,
                        "properties": {
                            "file": {"type": "string", "minLength": 1,
                                     "description": SIGNATURES_KEYS["file"]},
                            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                                       "description": SIGNATURES_KEYS["sha256"]}}}
        elif key == "output":
            top[key] = {"anyOf": [{"type": "integer", "minimum": 0},
                                  {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}],
                        "description": desc}
        else:
            top[key] = {"type": "object", "description": desc}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "pytest-unitablate/spec.schema.json",
        "title": f"pytest-unitablate spec, format version {FORMAT_VERSION}",
        "type": "object",
        "additionalProperties": False,
        "required": list(REQUIRED_TOP),
        "properties": top,
        "$defs": {"target": target, "expect": expect, "ablation": ablation, "check": check},
    }


def render() -> str:
    """The schema as the JSON text the package ships."""
    return json.dumps(build_schema(), indent=2) + "\n"


if __name__ == "__main__":
    print(render(), end="")
