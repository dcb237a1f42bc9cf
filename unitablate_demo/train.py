"""Train (or fine-tune) a demo checkpoint on the digits train split, CPU only, seeded.

Commands that produced the shipped checkpoints (each about 15 s on one core)::

    python -m unitablate_demo.train --model resnet --seed 0
    python -m unitablate_demo.train --model alexnet --seed 0
    python -m unitablate_demo.train --model resnet --seed 1 --name resnet-retrained
    python -m unitablate_demo.train --model resnet --seed 0 --name resnet-finetuned \\
        --finetune-from resnet --make-redundant layer3.0:UNITS

Training recipe (both models): Adam, cosine learning-rate schedule, batch 64, cross-entropy
with label smoothing 0.1, no augmentation, plus an L1 penalty on the classifier's weights
(``--fc-l1``; a sparse read-out in the spirit of Wong et al. 2021, "Leveraging Sparse Linear
Layers for Debuggable Deep Networks"). The sparse read-out and the narrow ResNet are what
make single units matter for single classes on a task this easy: a wide, densely read
network spreads every class over dozens of units and no single ablation moves anything.

``--make-redundant LAYER:U1,U2`` makes the fine-tuned regression: it starts from a reference
checkpoint (so every unit keeps its index) and fine-tunes every weight for a few epochs on
the sum of two losses, the ordinary one and the same loss with units ``U1, U2`` of ``LAYER``
zeroed (the ablation the spec checks, applied during training). The network learns to
classify without those units, so ablating them afterwards no longer hurts their classes,
while every other unit keeps most of its role. This is the failure mode a fine-tune,
distillation or pruning pass can cause silently: overall accuracy is unchanged, the units a
team relies on are no longer what they were.

Determinism: ``torch.manual_seed(seed)``, a seeded shuffling generator,
``torch.use_deterministic_algorithms(True)`` and one thread; a rerun on the same machine
and torch version gives the same weights. The checkpoint (a ``state_dict``) and its manifest
entry (sha256, test accuracy, seed, hyperparameters, torch version, command) go to
``unitablate_demo/checkpoints/``.

Example::

    $ python -m unitablate_demo.train --model resnet --seed 0
    resnet: test accuracy 98.83% (8 s, 107 KiB) -> resnet.pt
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unitablate_demo.data import DATA_SHA256, data_sha256, load_split
from unitablate_demo.models import (
    ARCHITECTURES,
    CHECKPOINT_DIR,
    MANIFEST_PATH,
    load_model,
    read_manifest,
    sha256_file,
)
from unitablate_demo.oracle import zero

DEFAULTS: dict[str, dict[str, float]] = {
    "resnet": {
        "epochs": 30, "lr": 3e-3, "weight_decay": 5e-4, "fc_l1": 0.01, "label_smoothing": 0.1,
    },
    "alexnet": {
        "epochs": 40, "lr": 1e-3, "weight_decay": 5e-4, "fc_l1": 0.1, "label_smoothing": 0.1,
    },
    # the ViT: AdamW with a one-cycle schedule (a transformer trains badly without warmup)
    "vit": {
        "epochs": 60, "lr": 3e-3, "weight_decay": 0.05, "fc_l1": 0.01, "label_smoothing": 0.1,
    },
}
FINETUNE_DEFAULTS: dict[str, float] = {
    "epochs": 8, "lr": 5e-4, "weight_decay": 0.0, "fc_l1": 0.0, "label_smoothing": 0.1,
}


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on one batch of all examples."""
    model.eval()
    with torch.inference_mode():
        return float((model(x).argmax(1) == y).float().mean())


def readout(model: nn.Module) -> nn.Linear:
    """The classifier's final linear layer (``fc``, or the ViT's ``heads.head``)."""
    fc = getattr(model, "fc", None) or dict(model.named_modules()).get("heads.head")
    assert isinstance(fc, nn.Linear), type(model).__name__
    return fc


#: A set of units a fine-tune makes redundant: (layer, units, "channel" or "head", dim).
Redundant = tuple[str, tuple[int, ...], str, int]


def train(
    model: nn.Module,
    seed: int,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    fc_l1: float = 0.0,
    label_smoothing: float = 0.0,
    batch_size: int = 64,
    redundant: Sequence[Redundant] = (),
    one_cycle: bool = False,
    log: bool = True,
    split: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> nn.Module:
    """Train ``model`` in place on the train split and return it in eval mode.

    ``redundant`` adds the loss of the model with all those units zeroed together.
    ``one_cycle``: AdamW with a one-cycle schedule (the ViT), else Adam with cosine decay.
    ``split``: ``(inputs, labels)`` to train on instead of the train split.
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    x, y = load_split("train") if split is None else split
    fc = readout(model)
    steps_per_epoch = (len(x) + batch_size - 1) // batch_size
    if one_cycle:
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=lr,
                                                       weight_decay=weight_decay)
        sched: Any = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr,
                                                         total_steps=epochs * steps_per_epoch)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            if fc_l1:
                loss = loss + fc_l1 * fc.weight.abs().sum()
            loss.backward()
            if redundant:  # plus the loss with the redundant units zeroed together; its
                with ExitStack() as zeroed:  # backward runs inside (a head's mask is a
                    for layer, units, unit, dim in redundant:  # parametrization of the
                        zeroed.enter_context(zero(model, layer, units, unit, dim))  # weight)
                    without = loss_fn(model(x[idx]), y[idx])
                    without.backward()
                loss = loss + without.detach()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log and ((epoch + 1) % 10 == 0 or epoch + 1 == epochs):
            print(f"epoch {epoch + 1}/{epochs} loss {total / len(x):.4f}", flush=True)
    model.eval()
    return model


def save(name: str, arch: str, model: nn.Module, entry: dict[str, Any]) -> dict[str, Any]:
    """Save ``model``'s state_dict as ``checkpoints/<name>.pt`` and update the manifest."""
    path = CHECKPOINT_DIR / f"{name}.pt"
    CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    x, y = load_split("test")
    record: dict[str, Any] = {
        "file": path.name,
        "arch": arch,
        "sha256": sha256_file(path),
        "test_accuracy": round(accuracy(model, x, y), 6),
        "test_n": len(y),
        "torch_version": torch.__version__,
        "data_sha256": data_sha256(),
        **entry,
    }
    manifest = read_manifest()
    manifest[name] = record
    MANIFEST_PATH.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return record


def parse_units(text: str) -> Redundant:
    """``"layer3.0:3,7"`` -> channels 3 and 7 of ``layer3.0``; ``LAYER@head:1`` is head 1
    of an attention layer, ``LAYER@-1:53`` unit 53 along dimension -1 (a ViT's neurons).

    Example::

        >>> parse_units("layer3.0:3,7"), parse_units("blk.attn@head:1")
        (('layer3.0', (3, 7), 'channel', 1), ('blk.attn', (1,), 'head', 1))
        >>> parse_units("blk.mlp.1@-1:53")
        ('blk.mlp.1', (53,), 'channel', -1)
    """
    layer, _, units = text.rpartition(":")
    if not layer:
        raise argparse.ArgumentTypeError(f"expected LAYER:U1,U2, got {text!r}")
    layer, _, kind = layer.partition("@")
    values = tuple(int(u) for u in units.split(","))
    if kind == "head":
        return layer, values, "head", 1
    return layer, values, "channel", int(kind) if kind else 1


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Train a demo checkpoint on UCI digits.")
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="checkpoint name (default: the model name)")
    for key in ("epochs", "lr", "weight_decay", "fc_l1", "label_smoothing"):
        parser.add_argument("--" + key.replace("_", "-"), type=float, dest=key)
    parser.add_argument("--finetune-from", metavar="NAME", help="start from this checkpoint")
    parser.add_argument("--make-redundant", type=parse_units, action="append", default=[],
                        metavar="LAYER[@head|@DIM]:U1,U2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if data_sha256() != DATA_SHA256:
        print("warning: data/digits.npz differs from the shipped file", file=sys.stderr)
    hp = dict(FINETUNE_DEFAULTS if args.finetune_from else DEFAULTS[args.model])
    for key in hp:
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    if args.finetune_from:
        start = load_model(args.finetune_from)
        if type(start) is not type(ARCHITECTURES[args.model]()):
            parser.error(f"--finetune-from {args.finetune_from} is not a {args.model}")
    else:
        torch.manual_seed(args.seed)  # the initial weights depend on the seed too
        start = ARCHITECTURES[args.model]()
    t0 = time.perf_counter()
    model = train(
        start,
        args.seed,
        epochs=int(hp["epochs"]),
        lr=hp["lr"],
        weight_decay=hp["weight_decay"],
        fc_l1=hp["fc_l1"],
        label_smoothing=hp["label_smoothing"],
        redundant=args.make_redundant,
        one_cycle=args.model == "vit",
    )
    seconds = time.perf_counter() - t0
    name = args.name or args.model
    argv_used = sys.argv[1:] if argv is None else argv
    entry: dict[str, Any] = {
        "seed": args.seed,
        "command": "python -m unitablate_demo.train " + shlex.join(argv_used),
        "hyperparameters": hp,
        "train_seconds": round(seconds, 1),
        "threads": args.threads,
    }
    if args.finetune_from:
        entry["finetuned_from"] = args.finetune_from
    if len(args.make_redundant) == 1 and args.make_redundant[0][2:] == ("channel", 1):
        layer, units, _, _ = args.make_redundant[0]
        entry["made_redundant"] = {"layer": layer, "units": list(units)}
    elif args.make_redundant:
        entry["made_redundant"] = [{"layer": layer, "units": list(units), "unit": unit,
                                    "channel_dim": dim}
                                   for layer, units, unit, dim in args.make_redundant]
    record = save(name, args.model, model, entry)
    size_kb = (CHECKPOINT_DIR / record["file"]).stat().st_size / 1024
    print(
        f"{name}: test accuracy {100 * record['test_accuracy']:.2f}% "
        f"({seconds:.0f} s, {size_kb:.0f} KiB) -> {Path(record['file'])}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
