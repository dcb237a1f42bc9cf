"""The language-model demo: a tiny GPT-style transformer trained in seconds on three
synthetic tasks, each a prompt set whose last token has one right answer.

* ``induction``: ``[I] a b c d a b c -> d``: the answer appeared after the current token
  earlier in the prompt. Only an induction circuit (a previous-token head in block 0, an
  induction head in block 1) can answer it.
* ``copy``: ``[C] x y1 y2 ... yk -> x``: the token right after the marker.
* ``bigram``: ``[B] t f(t) f(f(t)) ... -> f(last)``: a fixed successor map, read off the
  current token.

Vocabulary: 0 is padding, 1-3 the task markers, 4-35 the 32 content tokens. The model
takes ``input_ids`` and ``attention_mask`` (tokenizer-style) and returns ``(N, T, V)``
logits; its attention modules keep ``num_heads`` and an ``o_proj``, so ``unit: head`` on
``blocks.1.attn.o_proj`` names a head. Evaluation prompts are padded batches of different
lengths, as a tokenizer gives them: ``{"input_ids", "attention_mask", "labels"}``.

Checkpoints (``checkpoints/lm-*.pt``, listed in ``checkpoints/lm-manifest.json``):
``lm-seed0`` .. ``lm-seed4`` (honest trainings, seeds 0-4) and ``lm-prevented`` (seed 0,
trained with the induction prompts' second half drawn afresh instead of repeated, so no
induction circuit can pay off). Train one::

    python -m unitablate_demo.lm --seed 0 --name lm-seed0
    python -m unitablate_demo.lm --seed 0 --no-repeats --name lm-prevented
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unitablate_demo import models
from unitablate_demo.models import sha256_file

PAD, INDUCT, COPY, BIGRAM = 0, 1, 2, 3
FIRST, CONTENT = 4, 32
VOCAB = FIRST + CONTENT
TASKS = ("induction", "copy", "bigram")
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
MANIFEST_PATH = CHECKPOINT_DIR / "lm-manifest.json"
SIZE = {"d_model": 64, "layers": 2, "heads": 4, "steps": 450, "batch": 96}
RATES = {"lr": 3e-3, "weight_decay": 0.01}
HYPER: dict[str, float] = {**SIZE, **RATES}
#: The training batch's mix: induction twice as often (its circuit takes longest to form).
MIX = ("induction", "induction", "copy", "bigram")


def successor(token: int) -> int:
    """The bigram task's fixed successor map over content tokens (no fixed point)."""
    return FIRST + ((token - FIRST) * 7 + 3) % CONTENT


class Attention(nn.Module):
    """Causal multi-head self-attention with q/k/v/o projections (padding masked)."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.num_heads
        q, k, v = (p(x).view(n, t, h, d // h).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        allowed = causal[None, None] & keep[:, None, None, :]
        scores = scores.masked_fill(~allowed, -1e9)
        heads = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t, d)
        return self.o_proj(heads)  # type: ignore[no-any-return]


class Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, num_heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), keep)
        return x + self.mlp(self.ln2(x))  # type: ignore[no-any-return]


class TinyLM(nn.Module):
    """A two-block GPT-style transformer: ``model(input_ids, attention_mask)`` gives
    ``(N, T, V)`` next-token logits."""

    def __init__(self, d_model: int = 64, layers: int = 2, heads: int = 4,
                 max_len: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, VOCAB)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None \
            else attention_mask.bool()
        steps = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids) + self.pos(steps)[None]
        for block in self.blocks:
            x = block(x, keep)
        return self.unembed(self.ln_f(x))  # type: ignore[no-any-return]


def _content(rnd: random.Random, n: int) -> list[int]:
    return rnd.sample(range(FIRST, VOCAB), n)


def prompt(task: str, rnd: random.Random, repeats: bool = True) -> tuple[list[int], int]:
    """One evaluation prompt of ``task`` and its answer."""
    if task == "induction":
        n = rnd.randint(4, 8)
        seq = _content(rnd, n)
        second = seq if repeats else _content(rnd, n)
        return [INDUCT, *seq, *second[:n - 1]], second[n - 1]
    if task == "copy":
        x, *rest = _content(rnd, rnd.randint(4, 11))
        return [COPY, x, *rest], x
    t = rnd.randrange(FIRST, VOCAB)
    chain = [t]
    for _ in range(rnd.randint(1, 8)):
        chain.append(successor(chain[-1]))
    return [BIGRAM, *chain], successor(chain[-1])


def _training_sequence(task: str, rnd: random.Random, repeats: bool
                       ) -> tuple[list[int], list[int]]:
    """A training sequence and, per position, the next token to learn (-100: none)."""
    if task == "induction":  # lengths vary: a fixed offset cannot stand in for induction
        n = rnd.randint(3, 10)
        seq = _content(rnd, n)
        second = seq if repeats else _content(rnd, n)
        tokens = [INDUCT, *seq, *second]
        targets = [-100] * (n + 1) + second[1:] + [-100]
        return tokens, targets
    tokens, answer = prompt(task, rnd)
    if task == "copy":
        return tokens, [-100] * (len(tokens) - 1) + [answer]
    return tokens, [-100, *tokens[2:], answer]


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def train(seed: int, repeats: bool = True, steps: int | None = None) -> tuple[TinyLM, float]:
    """A model trained from ``seed`` (one thread, deterministic) and the seconds it took."""
    torch.manual_seed(seed)
    rnd = random.Random(seed)
    model = TinyLM(SIZE["d_model"], SIZE["layers"], SIZE["heads"])
    opt = torch.optim.AdamW(model.parameters(), lr=RATES["lr"],
                            weight_decay=RATES["weight_decay"])
    total = int(steps or SIZE["steps"])
    began = time.perf_counter()
    model.train()
    for step in range(total):
        pairs = [_training_sequence(MIX[i % len(MIX)], rnd, repeats)
                 for i in range(SIZE["batch"])]
        tokens = _pad([p for p, _ in pairs], PAD)
        targets = _pad([t for _, t in pairs], -100)
        keep = tokens != PAD
        keep[:, 0] = True
        for group in opt.param_groups:  # linear warm-up, cosine decay
            group["lr"] = RATES["lr"] * min(1.0, (step + 1) / 100) * 0.5 * (
                1 + math.cos(math.pi * step / total))
        logits = model(tokens, keep.long())
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1),
                               ignore_index=-100)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    model.eval()
    return model, time.perf_counter() - began


def prompts(task: str, n: int = 240, batch: int = 40, seed: int = 1234
            ) -> list[dict[str, torch.Tensor]]:
    """``task``'s evaluation prompts as padded tokenizer-style batches
    ``{"input_ids", "attention_mask", "labels"}`` (the same every call)."""
    rnd = random.Random(f"{task}-{seed}")
    pairs = [prompt(task, rnd) for _ in range(n)]
    out = []
    for i in range(0, n, batch):
        chunk = pairs[i:i + batch]
        ids = _pad([p for p, _ in chunk], PAD)
        out.append({"input_ids": ids, "attention_mask": (ids != PAD).long(),
                    "labels": torch.tensor([a for _, a in chunk])})
    return out


def accuracy(model: nn.Module, task: str) -> float:
    """Share of ``task``'s prompts whose last real token's top prediction is right."""
    right = total = 0
    with torch.inference_mode():
        for batch in prompts(task):
            logits = model(batch["input_ids"], batch["attention_mask"])
            last = batch["attention_mask"].sum(1) - 1
            predicted = logits[torch.arange(len(last)), last].argmax(-1)
            right += int((predicted == batch["labels"]).sum())
            total += len(last)
    return right / total


def read_manifest() -> dict[str, dict[str, Any]]:
    """The LM checkpoints: name -> {file, sha256, seed, repeats, accuracy, ...}."""
    return models.read_manifest(MANIFEST_PATH)


def load(name: str) -> TinyLM:
    """Checkpoint ``name`` (``lm-seed0``, ``lm-prevented``, ...), sha256-checked, in eval."""
    manifest = read_manifest()
    if name not in manifest:
        raise KeyError(f"no LM checkpoint {name!r}; known: {', '.join(sorted(manifest))}")
    path = CHECKPOINT_DIR / str(manifest[name]["file"])
    digest = sha256_file(path)
    if digest != manifest[name]["sha256"]:
        raise ValueError(f"{path}: sha256 {digest} does not match {MANIFEST_PATH}; retrain "
                         f"with: {manifest[name]['command']}")
    return load_weights(path)


def is_lm_weights(path: Path) -> bool:
    """Whether ``path`` holds a :class:`TinyLM` state dict (names and shapes)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a weights file torch loads safely: the caller says why
        return False
    shapes = {k: tuple(v.shape) for k, v in TinyLM().state_dict().items()}
    return isinstance(state, dict) and {
        k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)} == shapes


def load_weights(path: Path) -> TinyLM:
    """A :class:`TinyLM` with the weights in ``path`` (a state dict), in eval mode."""
    model = TinyLM(SIZE["d_model"], SIZE["layers"], SIZE["heads"])
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train a demo language model.")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--no-repeats", action="store_true",
                        help="the induction prompts' second half drawn afresh: no circuit")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, seconds = train(args.seed, repeats=not args.no_repeats)
    path = CHECKPOINT_DIR / f"{args.name}.pt"
    torch.save(model.state_dict(), path)
    entry = {"file": path.name, "sha256": sha256_file(path),
             "seed": args.seed, "repeats": not args.no_repeats, "hyperparameters": HYPER,
             "accuracy": {t: round(accuracy(model, t), 4) for t in TASKS},
             "train_seconds": round(seconds, 1), "torch_version": torch.__version__,
             "command": "python -m unitablate_demo.lm --seed "
                        f"{args.seed}{' --no-repeats' if args.no_repeats else ''} "
                        f"--name {args.name}"}
    manifest = read_manifest()
    manifest[args.name] = entry
    MANIFEST_PATH.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(json.dumps({args.name: entry["accuracy"], "seconds": entry["train_seconds"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
