"""expected_outcomes.json is current and agrees with a fresh evaluation of the specs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from unitablate_demo.models import read_manifest
from unitablate_demo.outcomes import EXPECTED_PATH, PLAN, ROOT, evaluate_spec

EXPECTED = json.loads(EXPECTED_PATH.read_text())


@pytest.fixture
def threads() -> Iterator[int]:
    """torch threads for the oracle: ``UNITABLATE_DEMO_THREADS`` (default 1; ``make
    test-threads`` runs with 2), restored afterwards."""
    import torch

    wanted = int(os.environ.get("UNITABLATE_DEMO_THREADS", "1"))
    before = torch.get_num_threads()
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)


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
    # fine-tune: identity: signature maps every named unit to itself
    for item in resnet["resnet-finetuned"]["items"]:
        if item["mode"] == "units":
            assert item["matched_units"] == item["units"] and not item["no_match"], item
    # retrain: every layer-wide check passes; a named class check passes only through a
    # mapping to a unit that carries the role (never a false pass), and the units matched
    # are not the recorded indices (unit indices mean nothing across retrains)
    retrained = resnet["resnet-retrained"]["items"]
    assert all(i["outcome"] == "passed" for i in retrained if i["mode"] != "units")
    named = [i for i in retrained if i["mode"] == "units" and i["target"] != "overall"]
    assert all(i["role_survives"] for i in named if i["outcome"] == "passed")
    assert all(i["matched_units"] != i["units"] for i in named if i["outcome"] == "passed")
    # what docs/identity.md reports: 4 roles survive the retrain, matching finds 3 of them
    # (layer2.1 unit 4, the "one" unit, is matched to unit 11 while unit 5 carries it);
    # the 4 lost roles all fail, 2 of them with "no unit matches"
    survived = [i for i in named if i["role_survives"]]
    assert (len(survived), sum(i["outcome"] == "passed" for i in survived)) == (4, 3)
    lost = [i for i in named if not i["role_survives"]]
    assert len(lost) == 4 and all(i["outcome"] == "failed" for i in lost)
    assert sum(i["no_match"] for i in lost) == 2


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
def test_fresh_evaluation_matches_the_file(spec: str, ckpt: str, threads: int) -> None:
    import torch

    assert torch.get_num_threads() == threads
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
