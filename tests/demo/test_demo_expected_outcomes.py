"""expected_outcomes.json is current and agrees with a fresh evaluation of the specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unitablate_demo.models import read_manifest
from unitablate_demo.outcomes import EXPECTED_PATH, PLAN, ROOT, evaluate_spec

EXPECTED = json.loads(EXPECTED_PATH.read_text())


def test_expected_outcomes_refer_to_the_shipped_checkpoints() -> None:
    manifest = read_manifest()
    assert set(EXPECTED["specs"]) == set(PLAN)
    for spec, per_ckpt in EXPECTED["specs"].items():
        assert set(per_ckpt) == set(PLAN[spec])
        for ckpt, block in per_ckpt.items():
            assert block["checkpoint_sha256"] == manifest[ckpt]["sha256"], (spec, ckpt)


def test_the_story_the_docs_tell() -> None:
    resnet = EXPECTED["specs"]["specs/resnet.yaml"]
    assert resnet["resnet"]["failed"] == 0
    # fine-tune: exactly the named checks on the units it made redundant fail
    made = read_manifest()["resnet-finetuned"]["made_redundant"]
    failed = [i for i in resnet["resnet-finetuned"]["items"] if i["outcome"] == "failed"]
    assert failed and all(
        i["mode"] == "units" and i["layer"] == made["layer"] and set(i["units"]) <= set(
            made["units"]) and i["target"] != "overall" for i in failed
    )
    # retrain: every named class check fails, every layer-wide check passes
    for item in resnet["resnet-retrained"]["items"]:
        named_class = item["mode"] == "units" and item["target"] != "overall"
        assert (item["outcome"] == "failed") == named_class, item


def _items(spec: str, ckpt: str) -> list[tuple[int, str, str, str]]:
    return [
        (i["check"], i["target"], i["constraint"], i["outcome"])
        for i in EXPECTED["specs"][spec][ckpt]["items"]
    ]


@pytest.mark.parametrize(
    ("spec", "ckpt"),
    [
        pytest.param(s, c, marks=[] if c == "resnet-finetuned" else [pytest.mark.slow])
        for s, cs in PLAN.items()
        for c in cs
    ],
)
def test_fresh_evaluation_matches_the_file(spec: str, ckpt: str) -> None:
    fresh = evaluate_spec(Path(ROOT) / spec, ckpt)
    assert [(i.check, i.target, i.constraint, i.outcome) for i in fresh] == _items(spec, ckpt)


@pytest.mark.parametrize("spec", sorted(PLAN))
def test_ids_and_lines_agree_with_the_spec_loader(spec: str) -> None:
    from pytest_unitablate.spec.ids import item_ids
    from pytest_unitablate.spec.loader import load_spec

    keys = item_ids(load_spec(Path(ROOT) / spec))
    for ckpt in PLAN[spec]:
        items = EXPECTED["specs"][spec][ckpt]["items"]
        assert [i["id"] for i in items] == [k.id for k in keys]
        assert [i["item_line"] for i in items] == [k.line for k in keys]
        assert [i["line"] for i in items] == [k.check.line for k in keys]
