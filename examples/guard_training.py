"""Guard a training run with a spec: a plain PyTorch loop that stops when a protected unit
loses its class.

The loop fine-tunes the demo ResNet (the reference checkpoint) on the digits train split.
Its recipe has a flaw a team would not see in the loss or the accuracy: beside the
ordinary loss it adds the loss of the network with units 0 and 15 of ``layer3.0`` zeroed
(a structured-dropout regulariser aimed at the wrong units). The network learns to do
without them, so the classes they carried (four and six) stop depending on them, while
overall accuracy hardly moves. Every ``--every`` epochs the loop asks
:func:`pytest_unitablate.run_spec` whether the model still meets ``examples/guard.yaml``
and stops with the failure text at the first check it misses.

    python examples/guard_training.py                 # stops at the first failing check
    python examples/guard_training.py --no-flaw       # the plain recipe: every check passes

Exit code: 1 when the guard stopped the run (as a failing test would), 0 when every
check passed after every epoch. It prints, measured, what one guard evaluation costs
beside one training epoch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from pytest_unitablate import ablate, run_spec
from unitablate_demo.data import digits_loader, load_split
from unitablate_demo.fixtures import resnet

GUARD = Path(os.path.relpath(Path(__file__).with_name("guard.yaml")))


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, gen: torch.Generator, flaw: bool = True,
                batch_size: int = 64) -> float:
    """One epoch of the recipe (``flaw``: with the misaimed regulariser); the mean loss."""
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    order = torch.randperm(len(x), generator=gen)
    total = 0.0
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        if flaw:
            with ablate(model, {"layer3.0": [0, 15]}):  # the flaw: these units, dropped
                loss = loss + loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    model.eval()
    return total / len(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--every", type=int, default=1, help="check the guard every N epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-flaw", action="store_true",
                        help="train with the ordinary loss only (the guard should pass)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = resnet()
    x, y = load_split("train")
    test = digits_loader("test")
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    gen = torch.Generator().manual_seed(args.seed)

    began = time.perf_counter()
    before = run_spec(GUARD, fixtures={"digits_resnet": model, "digits_test": test})
    check_seconds = [time.perf_counter() - began]
    print(f"before training: {len(before.records)} items, {len(before.failed)} failed "
          f"({check_seconds[0]:.2f} s)")
    epoch_seconds = []
    for epoch in range(1, args.epochs + 1):
        began = time.perf_counter()
        loss = train_epoch(model, opt, x, y, gen, flaw=not args.no_flaw)
        epoch_seconds.append(time.perf_counter() - began)
        if epoch % args.every:
            continue
        began = time.perf_counter()
        run = run_spec(GUARD, fixtures={"digits_resnet": model, "digits_test": test})
        check_seconds.append(time.perf_counter() - began)
        print(f"epoch {epoch}: loss {loss:.4f}, {len(run.records)} items, "
              f"{len(run.failed)} failed")
        if run.failed:
            print(f"\nguard tripped after epoch {epoch}; training stopped:\n")
            print(run.text())
            _costs(epoch_seconds, check_seconds)
            return 1
    _costs(epoch_seconds, check_seconds)
    return 0


def _costs(epochs: list[float], checks: list[float]) -> None:
    epoch = sorted(epochs)[len(epochs) // 2]
    check = sorted(checks)[len(checks) // 2]
    print(f"\ncost: one guard evaluation {check:.2f} s (median of {len(checks)}), one "
          f"training epoch {epoch:.2f} s (median of {len(epochs)}): "
          f"{check / epoch:.1f} epochs' worth")


if __name__ == "__main__":
    sys.exit(main())
