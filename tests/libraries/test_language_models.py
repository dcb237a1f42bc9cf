"""A Hugging Face causal LM guarded per task without a wrapper: tokenizer batches (a real
``PreTrainedTokenizerFast``, padded prompts of different lengths), ``position: last``, and
``data:`` as named prompt groups, each a target. Every number equals weight surgery on the
attention output projection, measured at each prompt's last real token."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_unitablate import run_spec

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::FutureWarning", "ignore::UserWarning")

SOURCE = '''
import random
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

WORDS = [f"w{i}" for i in range(30)]


def tokenizer():
    vocab = {"[PAD]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]")


def lm():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=31, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def _prompts(kind, seed):
    rnd = random.Random(seed)
    out = []
    for _ in range(24):
        n = rnd.randint(3, 6)   # different lengths: every batch is padded
        seq = rnd.sample(WORDS, n)
        if kind == "induction":  # A B C ... A B -> C
            prompt, target = seq + seq[:n - 1], seq[n - 1]
        elif kind == "copy":     # ... X X -> X
            prompt, target = seq + [seq[-1]], seq[-1]
        else:                    # a fixed bigram: wK -> w(K+1)
            prompt = seq
            target = WORDS[(WORDS.index(seq[-1]) + 1) % len(WORDS)]
        out.append((" ".join(prompt), target))
    return out


def batches(kind, seed=0):
    tok = tokenizer()
    pairs = _prompts(kind, seed)
    model = lm()
    result = []
    for i in range(0, len(pairs), 8):
        chunk = pairs[i:i + 8]
        enc = tok([p for p, _ in chunk], padding=True, return_tensors="pt")
        targets = torch.tensor(tok.convert_tokens_to_ids([t for _, t in chunk]))
        # the labels: what the model predicts now, a few changed (not 100% accurate)
        with torch.no_grad():
            logits = model(**enc).logits
        last = enc["attention_mask"].sum(1) - 1
        predicted = logits[torch.arange(len(chunk)), last].argmax(-1)
        labels = torch.where(torch.arange(len(chunk)) % 3 == 0, targets, predicted)
        result.append({**enc, "labels": labels})
    return result


def induction():
    return batches("induction")


def copying():
    return batches("copy")


def bigram():
    return batches("bigram")
'''

SPEC = """\
unitablate: 1
model: lmzoo:lm
data: {induction: lmzoo:induction, copy: lmzoo:copying, bigram: lmzoo:bigram}
output: logits
position: last
unit: head
checks:
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "lmzoo.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _correct_and_lp(model: torch.nn.Module, batches: list[dict]) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    right, lps = [], []
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits
            last = inputs["attention_mask"].sum(1) - 1
            chosen = logits[torch.arange(len(last)), last]
            right.append((chosen.argmax(-1) == batch["labels"]).numpy())
            lps.append(torch.log_softmax(chosen.double(), -1)[
                torch.arange(len(last)), batch["labels"]].numpy())
    return np.concatenate(right), np.concatenate(lps)


def test_heads_per_prompt_group_equal_weight_surgery_at_the_last_real_token(
        folder: Path) -> None:
    import lmzoo

    groups = {"induction": lmzoo.induction(), "copy": lmzoo.copying(),
              "bigram": lmzoo.bigram()}
    assert len({b["input_ids"].shape[1] for g in groups.values() for b in g}) > 1
    checks = "".join(
        f"  - layer: transformer.h.1.attn.c_proj\n    units: [{h}]\n    expect:\n"
        + "".join(f"      {t}: {{max_drop: 100%, max_logprob_drop: 50}}\n"
                  for t in ("induction", "copy", "bigram", "overall"))
        for h in range(4))
    (folder / "lm.yaml").write_text(SPEC + checks)
    run = run_spec("lm.yaml")
    assert {i.outcome for i in run.items} == {"passed"}, [i.message for i in run.items
                                                         if i.outcome != "passed"]
    model = lmzoo.lm()
    base = {g: _correct_and_lp(model, b) for g, b in groups.items()}
    moved = 0
    for h in range(4):
        surgery = copy.deepcopy(model)
        with torch.no_grad():  # Conv1D weight is (in, out): head h is rows h*8..h*8+8
            surgery.transformer.h[1].attn.c_proj.weight[h * 8:(h + 1) * 8] = 0
        after = {g: _correct_and_lp(surgery, b) for g, b in groups.items()}
        expected: dict[tuple[str, str], float] = {}
        for g in groups:
            expected[(g, "accuracy")] = base[g][0].mean() - after[g][0].mean()
            expected[(g, "logprob")] = base[g][1].mean() - after[g][1].mean()
        every = [np.concatenate([x[i] for x in d.values()]) for d in (base, after)
                 for i in (0, 1)]
        expected[("overall", "accuracy")] = every[0].mean() - every[2].mean()
        expected[("overall", "logprob")] = every[1].mean() - every[3].mean()
        got = {(r["target"], r["metric"]): r["drop"] for r in run.records
               if r["units"] == [h]}
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-6), (h, key)
        moved += abs(expected[("induction", "logprob")]) > 1e-3
    assert moved, "no head moved the induction prompts: the comparison proves nothing"
    assert {r["target"] for r in run.records} == {"induction", "copy", "bigram", "overall"}


def test_a_group_target_must_be_a_group_and_logits_need_a_position(folder: Path) -> None:
    from pytest_unitablate.errors import SpecError
    from pytest_unitablate.spec.loader import load_spec

    text = SPEC + ("  - layer: transformer.h.1.attn.c_proj\n    units: [1]\n    expect:\n"
                   "      inductoin: {max_drop: 10%}\n")
    with pytest.raises(SpecError, match=r"unknown target 'inductoin'.*did you mean "
                                        r"'induction'"):
        load_spec("lm.yaml", text=text)
    (folder / "nopos.yaml").write_text(
        (SPEC + "  - layer: transformer.h.1.attn.c_proj\n    units: [1]\n    expect:\n"
                "      copy: {max_drop: 100%}\n").replace("position: last\n", ""))
    (item,) = run_spec("nopos.yaml").items
    assert item.outcome == "failed" and item.message is not None
    assert "(N, T, V)" in item.message and "position:" in item.message
    assert "nopos.yaml:2:" in item.message  # model: (the spec has no position: line)
    (folder / "far.yaml").write_text((SPEC + (
        "  - layer: transformer.h.1.attn.c_proj\n    units: [1]\n    expect:\n"
        "      copy: {max_drop: 100%}\n")).replace("position: last", "position: 40"))
    (item,) = run_spec("far.yaml").items
    assert item.message is not None and "far.yaml:5: position: 40 is outside" in item.message


def test_position_on_a_check_and_groups_of_a_classifier(folder: Path) -> None:
    """``position:`` on one check (the spec has none), and data groups for a classifier:
    each group's drop is measured on its own examples."""
    (folder / "clf.py").write_text('''
import torch
from torch import nn


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def _part(seed, shift):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 6, generator=g) + shift
    with torch.no_grad():
        y = model()(x).argmax(1)
    y[::4] = (y[::4] + 1) % 3
    return [(x[:30], y[:30]), (x[30:], y[30:])]


def day():
    return _part(1, 0.0)


def night():
    return _part(2, -1.5)
''')
    (folder / "clf.yaml").write_text(
        "unitablate: 1\nmodel: clf:model\ndata: {day: clf:day, night: clf:night}\n"
        "checks:\n  - layer: '1'\n    units: [3]\n    expect:\n"
        "      day: {max_drop: 100%}\n      night: {max_drop: 100%}\n"
        "      overall: {max_drop: 100%}\n")
    import clf

    run = run_spec("clf.yaml")
    model = clf.model()
    drops = {}
    for name, part in (("day", clf.day()), ("night", clf.night())):
        x = torch.cat([a for a, _ in part])
        y = torch.cat([b for _, b in part])
        with torch.no_grad():
            before = (model(x).argmax(1) == y).double().mean()
            hidden = model[1](model[0](x))
            hidden[:, 3] = 0
            after = (model[2](hidden).argmax(1) == y).double().mean()
        drops[name] = float(before - after)
    got = {r["target"]: r["drop"] for r in run.records}
    assert got["day"] == pytest.approx(drops["day"], abs=1e-12)
    assert got["night"] == pytest.approx(drops["night"], abs=1e-12)
    assert got["overall"] == pytest.approx((drops["day"] + drops["night"]) / 2, abs=1e-12)

    checks = ("  - layer: transformer.h.1.attn.c_proj\n    position: last\n    units: [1]\n"
              "    expect:\n      copy: {max_drop: 100%}\n")
    (folder / "checkpos.yaml").write_text(SPEC.replace("position: last\n", "") + checks)
    (item,) = run_spec("checkpos.yaml").items
    assert item.outcome == "passed", item.message


def test_a_cache_keeps_one_entry_per_position(folder: Path) -> None:
    """Two checks that differ only in position:, with the on-disk store: each gets its own
    position's numbers, in the first run and when the second run reuses the store."""
    checks = "".join(
        f"  - name: at{tag}\n    layer: transformer.h.1.attn.c_proj\n    position: {pos}\n"
        f"    units: [0, 1, 2, 3]\n    expect:\n      induction: {{min_accuracy: 0%}}\n"
        for tag, pos in (("end", -1), ("last", "last")))
    (folder / "pos.yaml").write_text(SPEC.replace("position: last\n", "") + checks)
    import lmzoo

    right, _ = _correct_and_lp(lmzoo.lm(), lmzoo.induction())
    for _ in range(2):  # a fresh store, then the same store
        run = run_spec("pos.yaml", cache_dir=folder / "store")
        got = {r["id"].split("-")[0]: r["baseline"] for r in run.records}
        assert got["atlast"] == pytest.approx(right.mean(), abs=1e-12)
        assert got["atend"] != pytest.approx(right.mean(), abs=1e-12)  # padded positions
        assert {r["position"] for r in run.records} == {-1, "last"}
