"""The language-model demo (unitablate_demo/lm.py, specs/lm.yaml): one spec guards the
tiny LM per prompt set with ``position: last`` and data groups; its numbers equal weight
surgery; calibrated over seeds 0-2, it passes the held-back seeds 3 and 4 and fails the
model trained so that no induction circuit forms."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pytest_unitablate import run_spec
from unitablate_demo import lm

SPEC = Path(__file__).parents[2] / "specs" / "lm.yaml"


def _fixtures(name: str) -> dict[str, Any]:
    return {"lm_model": lm.load(name), "lm_induction": lm.prompts("induction"),
            "lm_copy": lm.prompts("copy"), "lm_bigram": lm.prompts("bigram")}


@pytest.mark.parametrize("name", ["lm-seed3", "lm-seed4"])
def test_held_back_seeds_pass_the_calibrated_spec(name: str) -> None:
    run = run_spec(SPEC, fixtures=_fixtures(name))
    assert {i.outcome for i in run.items} == {"passed"}, [
        (i.id, i.message) for i in run.items if i.outcome != "passed"]


def test_the_model_without_an_induction_circuit_fails_on_induction_and_copy() -> None:
    run = run_spec(SPEC, fixtures=_fixtures("lm-prevented"))
    failed = {(r["target"], r["constraint"]) for r in run.records if r["outcome"] == "failed"}
    assert ("induction", "min_logprob_drop") in failed
    assert ("induction", "min_accuracy") in failed
    assert not any(target == "bigram" for target, _ in failed)  # the bigram still works


def _last_token(model: torch.nn.Module, task: str) -> tuple[np.ndarray, np.ndarray]:
    right, lps = [], []
    with torch.inference_mode():
        for batch in lm.prompts(task):
            logits = model(batch["input_ids"], batch["attention_mask"])
            last = batch["attention_mask"].sum(1) - 1
            chosen = logits[torch.arange(len(last)), last]
            right.append((chosen.argmax(-1) == batch["labels"]).numpy())
            lps.append(torch.log_softmax(chosen.double(), -1)[
                torch.arange(len(last)), batch["labels"]].numpy())
    return np.concatenate(right), np.concatenate(lps)


def test_the_specs_numbers_equal_weight_surgery() -> None:
    model = lm.load("lm-seed1")
    run = run_spec(SPEC, fixtures=_fixtures("lm-seed1"))
    surgery = copy.deepcopy(model)
    with torch.no_grad():  # every head of block 1 zeroed: o_proj's input columns
        surgery.blocks[1].attn.o_proj.weight.zero_()
    for task in lm.TASKS:
        (b_ok, b_lp), (a_ok, a_lp) = _last_token(model, task), _last_token(surgery, task)
        got = {r["constraint"]: r for r in run.records
               if r["target"] == task and r["id"].startswith("block1-heads")}
        if "min_logprob_drop" in got:
            assert got["min_logprob_drop"]["drop"] == pytest.approx(
                b_lp.mean() - a_lp.mean(), abs=1e-5)
        if "min_drop" in got:
            assert got["min_drop"]["drop"] == pytest.approx(b_ok.mean() - a_ok.mean(),
                                                            abs=1e-12)
        assert got["min_accuracy"]["baseline"] == pytest.approx(b_ok.mean(), abs=1e-12)
    induction = _last_token(model, "induction")[0].mean()
    assert induction < 1, "the demo LM should not be perfect at baseline"


@pytest.mark.slow
def test_training_forms_the_induction_circuit_only_with_repeats() -> None:
    """What lm-prevented stands for, measured afresh on a seed no checkpoint used."""
    torch.set_num_threads(1)
    honest, _ = lm.train(7)
    prevented, _ = lm.train(7, repeats=False)
    assert lm.accuracy(honest, "induction") > 0.8
    assert lm.accuracy(prevented, "induction") < 0.2
    assert lm.accuracy(prevented, "bigram") > 0.9


def test_top_units_of_a_group_rank_on_the_grouped_ranking_data() -> None:
    """``ranking_data:`` grouped like ``data:``: the heads ranked by their drop of the
    induction group are the ones weight surgery finds; ``reference:`` (mean ablation) takes
    its means from other prompts."""
    import tempfile

    text = """unitablate: 1
model: lm_model
data: {induction: lm_induction, copy: lm_copy, bigram: lm_bigram}
ranking_data: {induction: rank_induction, copy: rank_copy, bigram: rank_bigram}
position: last
unit: head
checks:
  - layer: blocks.0.attn.o_proj
    top_units:
      k: 1
      class: induction
      expect:
        induction: {min_logprob_drop: 0.01}
  - layer: blocks.0.attn.o_proj
    units: [1]
    ablation: mean
    reference: rank_copy
    expect:
      induction: {min_logprob_drop: 0.01}
"""
    fixtures = _fixtures("lm-seed2")
    fixtures.update({f"rank_{t}": lm.prompts(t, n=120, seed=99) for t in lm.TASKS})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rank.yaml"
        path.write_text(text)
        run = run_spec(path, fixtures=fixtures)
    assert {i.outcome for i in run.items} == {"passed"}, [i.message for i in run.items]
    top = next(r for r in run.records if r["id"].startswith("blocks.0.attn.o_proj-top"))
    # seed 2's head 0.1 carries induction (docs/analysis.md): ranked first on the ranking
    # prompts, by its drop of the induction group, not of the whole data
    assert top["units"] == [1]


def test_discover_finds_the_induction_head_from_prompt_groups(tmp_path: Path) -> None:
    """``discover --data NAME=REF ... --position last --unit head``: the starter spec names
    head 1 of block 0 for the induction prompts (lm-seed0's previous-token head, 0.84
    nats in docs/analysis.md) and runs as written."""
    from pytest_unitablate.cli import main

    out = tmp_path / "start.yaml"
    code = main(["discover", "--model", "unitablate_demo.fixtures:lm",
                 "--data", "induction=unitablate_demo.fixtures:induction_prompts",
                 "--data", "copy=unitablate_demo.fixtures:copy_prompts",
                 "--data", "bigram=unitablate_demo.fixtures:bigram_prompts",
                 "--position", "last", "--unit", "head",
                 "--layer", "blocks.0.attn.o_proj", "--out", str(out)])
    assert code == 0
    text = out.read_text()
    assert "position: last" in text and "data: {induction: " in text
    first = text.split("  - layer:")[1]
    assert "units: [1]" in first and "induction: {min_drop:" in first
    run = run_spec(out)
    assert {i.outcome for i in run.items} == {"passed"}
