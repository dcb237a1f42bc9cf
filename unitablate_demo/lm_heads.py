"""Every head of the demo language models ablated alone, per prompt set: the table behind
docs/analysis.md ("Heads of a small language model") and the checks of specs/lm.yaml.

    python -m unitablate_demo.lm_heads            # all LM checkpoints, a markdown table

For each checkpoint, block and head: the drop of the mean log-probability of the answer
(nats) and of accuracy (points) on the induction, copy and bigram prompts, and on all of
them together, with the head zeroed (``unit: head``, ``position: last``).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from unitablate_demo import lm


def head_table(name: str) -> list[dict[str, Any]]:
    """One row per (block, head) of checkpoint ``name``: drops per task and overall."""
    from pytest_unitablate.core.next_token import next_token
    from pytest_unitablate.core.scan.api import scan

    model = next_token(lm.load(name), "last")
    rows: list[dict[str, Any]] = []
    for block in range(2):
        layer = f"blocks.{block}.attn.o_proj"
        per_task = {task: scan(model, lm.prompts(task), layer, unit="head", progress=False)
                    for task in lm.TASKS}
        for head in range(4):
            row: dict[str, Any] = {"checkpoint": name, "block": block, "head": head}
            base_lp, ablated_lp, base_ok, ablated_ok = [], [], [], []
            for task, result in per_task.items():
                assert result.logprobs is not None
                b_lp, a_lp = np.asarray(result.baseline.logprob), np.asarray(result.logprobs[head])
                b_ok, a_ok = np.asarray(result.baseline.correct), np.asarray(result.correct[head])
                row[f"{task}_nats"] = float(b_lp.mean() - a_lp.mean())
                row[f"{task}_pp"] = 100 * float(b_ok.mean() - a_ok.mean())
                base_lp.append(b_lp)
                ablated_lp.append(a_lp)
                base_ok.append(b_ok)
                ablated_ok.append(a_ok)
            row["overall_nats"] = float(np.concatenate(base_lp).mean()
                                        - np.concatenate(ablated_lp).mean())
            row["overall_pp"] = 100 * float(np.concatenate(base_ok).mean()
                                            - np.concatenate(ablated_ok).mean())
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append",
                        help="an LM checkpoint (default: every one in lm-manifest.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = args.checkpoint or sorted(lm.read_manifest())
    print("| checkpoint | block.head | induction | copy | bigram | all prompts |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for r in head_table(name):
            cells = [f"{r[f'{t}_nats']:.2f} nats, {r[f'{t}_pp']:.0f} pp"
                     for t in (*lm.TASKS, "overall")]
            print(f"| {name} | {r['block']}.{r['head']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
