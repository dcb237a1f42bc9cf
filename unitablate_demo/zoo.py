"""Honest retrains and destructive candidates of the demo models, for the guard benchmark.

A guard is judged by what it does across retrains: it must pass every honest retrain (the
same recipe and data, another seed) and fail a candidate that destroyed the units it
protects. This module makes both kinds, into a folder of its own (never the shipped
checkpoints), each as a state dict plus a small JSON of how to load it:

* ``seed``: the demo recipe (:mod:`unitablate_demo.train`) with another seed. Seeds 0, 1
  and 2 of the ResNet and the AlexNet, and seeds 0 and 1 of the ViT, are the shipped
  checkpoints (``resnet``, ``resnet-retrained``, ``resnet-seed2``, ...), not retrained.
* ``dropout``: retrained from scratch with channel dropout (p = 0.2) on the outputs of the
  layers a spec guards, so that no single unit carries a class any more (the
  specialisation is spread over many units; a redundancy a compression or robustness
  recipe can bring).
* ``pruned``: the reference with the spec's named units switched off for good (zeroed at
  every forward) and the rest fine-tuned around them, as pruning then fine-tuning does.
* ``forgotten``: the reference fine-tuned (8 epochs, learning rate 2e-3) on the training
  data without one class, which it partly forgets; its units' drops mostly stay.
* ``redundant``: the shipped ``resnet-finetuned`` / ``vit-finetuned`` (units made
  redundant by training with them ablated).

Example::

    >>> from unitablate_demo.zoo import Candidate
    >>> Candidate("resnet", "seed", 4).name
    'resnet-seed4'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: The shipped checkpoints that are honest seeds of the demo recipe.
SHIPPED_SEEDS: dict[str, dict[int, str]] = {
    "resnet": {0: "resnet", 1: "resnet-retrained", 2: "resnet-seed2"},
    "alexnet": {0: "alexnet", 1: "alexnet-retrained", 2: "alexnet-seed2"},
    "vit": {0: "vit", 1: "vit-retrained"},
}
#: The shipped fine-tunes that made protected units redundant.
SHIPPED_REDUNDANT: dict[str, str] = {"resnet": "resnet-finetuned", "vit": "vit-finetuned"}
KINDS = ("seed", "dropout", "pruned", "forgotten", "redundant")


@dataclass(frozen=True)
class Unitset:
    """Units of one layer: ``unit`` is ``channel`` (along ``dim``) or ``head``."""

    layer: str
    units: tuple[int, ...]
    unit: str = "channel"
    dim: int = 1


@dataclass(frozen=True)
class Candidate:
    """One model of the benchmark: an architecture, a kind (:data:`KINDS`) and a seed."""

    arch: str
    kind: str
    seed: int = 0
    #: ``pruned``: the units switched off; ``dropout``: the layers (units ignored)
    units: tuple[Unitset, ...] = field(default=(), compare=False)
    #: ``forgotten``: the class left out of the fine-tune
    forget: int | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.kind}{self.seed}"


def shipped(c: Candidate) -> str | None:
    """The shipped checkpoint that is this candidate, or ``None`` (it must be trained)."""
    if c.kind == "seed":
        return SHIPPED_SEEDS.get(c.arch, {}).get(c.seed)
    if c.kind == "redundant":
        return SHIPPED_REDUNDANT.get(c.arch)
    return None


class _ChannelDropout:
    """A forward hook: dropout of whole channels (along ``dim``) in train mode only."""

    def __init__(self, p: float, dim: int) -> None:
        self.p, self.dim = p, dim

    def __call__(self, module: Any, _inputs: Any, out: Any) -> Any:
        import torch

        if not module.training:
            return out
        axis = self.dim % out.dim()
        shape = [1] * out.dim()
        shape[0], shape[axis] = out.shape[0], out.shape[axis]
        keep = (torch.rand(shape, device=out.device) >= self.p).to(out.dtype)
        return out * keep / (1.0 - self.p)


def switch_off(model: Any, units: Sequence[Unitset], stack: ExitStack) -> None:
    """Zero ``units`` of ``model`` at every forward until ``stack`` closes (heads by weight
    surgery on the output projection, channels by a forward hook)."""
    from unitablate_demo.oracle import zero

    for u in units:
        stack.enter_context(zero(model, u.layer, u.units, u.unit, u.dim))


def build(c: Candidate, out: Path, *, log: bool = False) -> Path:
    """Train ``c`` into ``out`` (kept: built once) and return its JSON description."""
    import torch

    from unitablate_demo.data import load_split
    from unitablate_demo.models import ARCHITECTURES, load_model
    from unitablate_demo.train import DEFAULTS, FINETUNE_DEFAULTS, train

    meta = out / f"{c.name}.json"
    if meta.exists():
        return meta
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    one_cycle = c.arch == "vit"
    hp = dict(DEFAULTS[c.arch])
    stack = ExitStack()
    source = shipped(c)
    if source is not None:
        model = load_model(source)
    elif c.kind in ("seed", "dropout"):
        torch.manual_seed(c.seed)
        model = ARCHITECTURES[c.arch]()
        if c.kind == "dropout":
            modules = dict(model.named_modules())
            for u in c.units:
                if u.unit == "channel":
                    stack.callback(modules[u.layer].register_forward_hook(
                        _ChannelDropout(0.2, u.dim)).remove)
        model = train(model, c.seed, epochs=int(hp["epochs"]), lr=hp["lr"],
                      weight_decay=hp["weight_decay"], fc_l1=hp["fc_l1"],
                      label_smoothing=hp["label_smoothing"], one_cycle=one_cycle, log=log)
        stack.close()
    else:
        model = load_model(SHIPPED_SEEDS[c.arch][0])
        ft = dict(FINETUNE_DEFAULTS)
        split = None
        if c.kind == "pruned":
            switch_off(model, c.units, stack)
        elif c.kind == "forgotten":  # a higher rate than a gentle fine-tune: it forgets
            ft["lr"] = 2e-3  # (the ResNet's class four: 98.3% -> 71.7%, overall 96.3%)
            x, y = load_split("train")
            keep = y != c.forget
            split = (x[keep], y[keep])
        train(model, c.seed, epochs=int(ft["epochs"]), lr=ft["lr"],
              weight_decay=ft["weight_decay"], label_smoothing=ft["label_smoothing"],
              one_cycle=one_cycle, log=log, split=split)
        stack.close()  # a pruned model's units stay off at load time (see load())
    weights = out / f"{c.name}.pt"
    torch.save(model.state_dict(), weights)
    meta.write_text(json.dumps({**asdict(c), "name": c.name, "weights": weights.name,
                                "shipped": source}, indent=2, sort_keys=True) + "\n")
    return meta


def load(meta: Path, stack: ExitStack) -> Any:
    """The model ``meta`` describes, in eval mode; a ``pruned`` model's units stay
    switched off until ``stack`` closes."""
    import torch

    from unitablate_demo.models import ARCHITECTURES

    info = json.loads(meta.read_text())
    model = ARCHITECTURES[info["arch"]]()
    model.load_state_dict(torch.load(meta.parent / info["weights"], map_location="cpu",
                                     weights_only=True))
    model.eval()
    if info["kind"] == "pruned":
        switch_off(model, [Unitset(u["layer"], tuple(u["units"]), u["unit"], u["dim"])
                           for u in info["units"]], stack)
    return model
