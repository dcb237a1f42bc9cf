"""The engine at its bound: each job against a plain loop, interleaved, ratios and bounds.

Jobs, all on the demo models (``unitablate_demo``), one torch thread, CPU time (user +
system, so load from other jobs on a shared machine costs less than on the wall clock):

* **ViT heads**, blocks 0, 1, 2: ``scan(..., unit="head")`` against the plain loop (one
  whole forward per head with a hook, plus the baseline: ``method="naive"``). The bound
  is a whole forward over (prefix / heads + suffix), the network split at the attention's
  output, times measured in the same run. Target: ratio >= max(1.0, 0.8 x bound).
* **AlexNet conv5** (256 channels, conv5 -> ReLU -> pooling -> Linear): ``scan()`` (the
  closed form) against the plain loop, timed on ``--loop-units`` channels and scaled to 256
  (its cost per unit is constant). Bound: 256 plain forwards over one forward. Target >= 80x.
* **plugin, passing every_unit** (ResNet ``layer3.0``): a whole ``pytest
  --unitablate-spec`` process against a whole ``python -c "... scan(...)"`` process that
  loads the same model and data and scans the layer. Target <= 1.3x. Its bound column is
  the floor: pytest itself (with the plugins installed beside it) running the same script
  as one plain test, over the python process.
* **256 named conv5 checks** (512 items): a whole pytest process against a whole python
  process running a plain hook loop over the same 256 units (baseline, then one forward per
  unit, per-class accuracy). Target >= 5x.
* where transformers is installed, a random-init GPT-2 (4 blocks, 4 heads; ``torch.fx``
  cannot trace it, so the replay engine runs): heads of each block's ``attn.c_proj``
  against the plain loop;
* where TransformerLens is installed, a random-init ``HookedTransformer`` (2 layers, 4
  heads): ``scan()`` of ``blocks.1.attn.hook_z`` heads against a ``run_with_hooks`` loop
  and a ``start_at_layer`` loop (the residual stream before block 1 computed once).

Every contender's predictions are checked equal to the plain loop's. Runs alternate
(A B A B ...) and medians are compared.

    python benchmarks/bench_bounds.py [--repeats 3] [--only vit,alexnet,plugin,named,tl]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def cpu() -> float:
    """CPU seconds of this process and its finished children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int
                ) -> tuple[dict[str, float], dict[str, Any]]:
    """Median CPU seconds of each function, run in turn ``repeats`` times."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    out: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            began = cpu()
            out[name] = fn()
            times[name].append(cpu() - began)
    return {k: statistics.median(v) for k, v in times.items()}, out


def row(job: str, ratio: float, bound: str, target: str, ok: bool, extra: str = "") -> None:
    print(f"{job:44s} {ratio:8.2f}x {bound:>9s} {target:>14s} {'PASS' if ok else 'FAIL':>5s}"
          f"  {extra}", flush=True)


def vit_heads(repeats: int, copies: int) -> None:
    import numpy as np

    from pytest_unitablate import scan
    from pytest_unitablate.core.evaluation import eval_mode
    from pytest_unitablate.core.scan.split import split_at
    from unitablate_demo.data import load_split
    from unitablate_demo.fixtures import vit

    model = vit()
    x, y = load_split("test")
    x, y = x.repeat(copies, 1, 1, 1), y.repeat(copies)
    data = [(x[i:i + 256], y[i:i + 256]) for i in range(0, len(x), 256)]
    for block in range(3):
        layer = f"encoder.layers.encoder_layer_{block}.self_attention"
        split = split_at(model, layer)[0]
        assert split is not None
        with eval_mode(model), eval_mode(split.prefix), eval_mode(split.suffix):
            kept = [split.prefix(b) for b, _ in data]
        heads = 4

        def timed(fn: Callable[[], Any], split: Any = split) -> Callable[[], Any]:
            def run() -> Any:
                with eval_mode(model), eval_mode(split.prefix), eval_mode(split.suffix):
                    return fn()
            return run

        # everything interleaved: the bound's parts and the contenders see the same load
        times, out = interleaved({
            "whole": timed(lambda: [model(b) for b, _ in data]),
            "prefix": timed(lambda split=split: [split.prefix(b) for b, _ in data]),
            "suffix": timed(lambda split=split, kept=kept: [split.suffix(*k) for k in kept]),
            "scan": lambda layer=layer: scan(model, data, layer, unit="head", progress=False),
            "loop": lambda layer=layer: scan(model, data, layer, unit="head", method="naive",
                                             progress=False)}, repeats)
        bound = times["whole"] / (times["prefix"] / heads + times["suffix"])
        same = np.array_equal(out["scan"].predictions, out["loop"].predictions)
        ratio = times["loop"] / times["scan"]
        row(f"ViT heads, block {block} ({len(x)} images)", ratio, f"{bound:.2f}x",
            f">= {max(1.0, 0.8 * bound):.2f}x", same and ratio >= max(1.0, 0.8 * bound),
            f"{out['scan'].method}; {times['scan']:.2f} s against {times['loop']:.2f} s")


def alexnet_conv5(repeats: int, loop_units: int) -> None:
    import numpy as np

    from pytest_unitablate import evaluate, scan
    from unitablate_demo.data import load_split
    from unitablate_demo.fixtures import alexnet

    model = alexnet()
    data = load_split("test")
    step = 256 // loop_units
    times, out = interleaved({
        "scan": lambda: scan(model, data, "conv5", progress=False),
        "loop": lambda: scan(model, data, "conv5", units=range(0, 256, step), method="naive",
                             progress=False),
        "forward": lambda: evaluate(model, data)}, repeats)
    per_unit_loop = times["loop"] / (loop_units + 1)  # its baseline is one more forward
    loop = per_unit_loop * 257
    same = np.array_equal(out["scan"].predictions[::step], out["loop"].predictions)
    ratio = loop / times["scan"]
    bound = loop / times["forward"]
    row("AlexNet conv5, 256 channels", ratio, f"{bound:.0f}x", ">= 80x",
        same and ratio >= 80, f"{out['scan'].method}; {times['scan']:.3f} s against "
        f"{loop:.1f} s ({loop_units} units timed)")


SCAN_SCRIPT = """
import torch
from pytest_unitablate import scan
from unitablate_demo.fixtures import {model}, test_data
r = scan({model}(), test_data(), {layer!r}, progress=False)
print(r.method, len(r.units))
"""

LOOP_SCRIPT = """
import json, sys
import numpy as np
import torch
from unitablate_demo.fixtures import alexnet, test_data
model, data = alexnet().eval(), test_data()
layer = dict(model.named_modules())["conv5"]
def run(unit=None):
    hits = np.zeros(10); preds = []
    def hook(m, a, out):
        out = out.clone(); out[:, unit] = 0; return out
    h = layer.register_forward_hook(hook) if unit is not None else None
    with torch.no_grad():
        for x, y in data:
            p = model(x).argmax(1)
            preds.append(p.numpy())
            hits += np.bincount(y[p == y].numpy(), minlength=10)
    if h is not None: h.remove()
    return hits, np.concatenate(preds)
base, _ = run()
rows = {u: run(u)[1].tolist() for u in range(%d)}
print(json.dumps({"n": len(rows)}))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTEST_") and k != "PYTHONDONTWRITEBYTECODE"}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    return env


def _process(cmd: list[str], cwd: Path) -> Callable[[], str]:
    def run() -> str:
        proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
                     f"{proc.stderr[-3000:]}")
        return proc.stdout
    return run


def _pytest(spec: str, report: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "--unitablate-spec", spec, "-q", "-p",
            "no:randomly", "-p", "no:cacheprovider", "--unitablate-report", str(report),
            *extra]


def plugin_every_unit(repeats: int, folder: Path) -> None:
    (folder / "every.yaml").write_text(
        "unitablate: 1\nmodel: digits_resnet\ndata: digits_test\n"
        f"classes: [{', '.join(CLASSES)}]\nchecks:\n  - layer: layer3.0\n    every_unit:\n"
        "      expect:\n        overall: {max_drop: 15%}\n")
    script = SCAN_SCRIPT.format(model="resnet", layer="layer3.0")
    (folder / "test_floor.py").write_text(
        "def test_scan():\n" + "".join(f"    {line}\n" for line in script.splitlines()))
    report = folder / "every.json"
    runs = {
        "plugin": _process(_pytest("every.yaml", report), folder),
        "scan": _process([sys.executable, "-c", script], folder),
        # the floor: pytest itself running the same python + scan() in one plain test
        "floor": _process([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p",
                           "no:cacheprovider", "test_floor.py"], folder)}
    runs["plugin"]()  # bytecode and the plugin's first import, for all
    runs["floor"]()
    times, out = interleaved(runs, repeats)
    items = json.loads(report.read_text())["items"]
    passed = all(i["outcome"] == "passed" for i in items)
    ratio = times["plugin"] / times["scan"]
    floor = times["floor"] / times["scan"]
    row("plugin, passing every_unit (resnet layer3.0)", ratio, f"{floor:.2f}x", "<= 1.3x",
        passed and ratio <= 1.3,
        f"{times['plugin']:.2f} s against {times['scan']:.2f} s (python + scan(): "
        f"{out['scan'].strip()}); {len(items)} item(s) passed: {passed}")
    row("  the same, against pytest running python + scan()", times["plugin"] / times["floor"],
        "", "", passed, f"{times['floor']:.2f} s: the bound column above is this floor "
        f"over python + scan()")


def named_checks(repeats: int, folder: Path, units: int) -> None:
    lines = ["unitablate: 1", "model: digits_alexnet", "data: digits_test",
             f"classes: [{', '.join(CLASSES)}]", "checks:"]
    for u in range(units):
        lines += ["  - layer: conv5", f"    units: [{u}]", "    expect:",
                  f"      {CLASSES[u % 10]}: {{max_drop: 30%}}",
                  "      overall: {max_drop: 3%}"]
    (folder / "named.yaml").write_text("\n".join(lines) + "\n")
    report = folder / "named.json"
    runs = {"plugin": _process(_pytest("named.yaml", report), folder),
            "loop": _process([sys.executable, "-c", LOOP_SCRIPT % units], folder)}
    runs["plugin"]()
    times, _ = interleaved(runs, repeats)
    items = json.loads(report.read_text())["items"]
    ratio = times["loop"] / times["plugin"]
    row(f"{units} named conv5 checks ({len(items)} items)", ratio, "", ">= 5x",
        ratio >= 5 and len(items) == 2 * units,
        f"{times['plugin']:.2f} s against {times['loop']:.2f} s for a plain hook loop")


def hugging_face(repeats: int) -> None:
    try:
        import transformers
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        print("transformers not installed: its job is skipped")
        return
    import numpy as np
    import torch

    from pytest_unitablate import scan

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)

    class Last(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.inner(t).logits[:, -1]  # type: ignore[no-any-return]

    cfg = GPT2Config(n_embd=64, n_layer=4, n_head=4, vocab_size=50, n_positions=16,
                     bos_token_id=1, eos_token_id=1)
    model = Last(GPT2LMHeadModel(cfg)).eval()
    tokens = torch.randint(0, 50, (1024, 12))
    with torch.no_grad():
        labels = model(tokens).argmax(1)
    data = [(tokens[i:i + 128], labels[i:i + 128]) for i in range(0, 1024, 128)]
    for block in range(4):
        layer = f"inner.transformer.h.{block}.attn.c_proj"
        times, out = interleaved({
            "scan": lambda layer=layer: scan(model, data, layer, unit="head", progress=False),
            "loop": lambda layer=layer: scan(model, data, layer, unit="head", method="naive",
                                             progress=False)}, repeats)
        same = np.array_equal(out["scan"].predictions, out["loop"].predictions)
        ratio = times["loop"] / times["scan"]
        row(f"HF GPT-2 heads, block {block} (1024 prompts)", ratio, "", ">= 1.00x",
            same and ratio >= 1.0,
            f"{out['scan'].method}; {times['scan']:.2f} s against {times['loop']:.2f} s")


def transformer_lens(repeats: int) -> None:
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        print("TransformerLens not installed: its job is skipped")
        return
    import warnings

    import numpy as np
    import torch

    from pytest_unitablate import scan

    torch.manual_seed(0)
    warnings.simplefilter("ignore", DeprecationWarning)
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128,
                                  n_ctx=16, d_vocab=50, act_fn="gelu", normalization_type="LN")
    model = HookedTransformer(cfg).eval()
    tokens = torch.randint(0, 50, (512, 16))
    labels = torch.randint(0, 50, (512,))

    class LastToken(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.inner(t)[:, -1]  # type: ignore[no-any-return]

    wrapped = LastToken(model).eval()
    data = [(tokens[i:i + 128], labels[i:i + 128]) for i in range(0, 512, 128)]
    layer = "inner.blocks.1.attn.hook_z"

    def hooks_loop() -> Any:
        rows = []
        for h in range(4):
            def zero(z: torch.Tensor, hook: Any, h: int = h) -> torch.Tensor:
                z = z.clone()
                z[:, :, h] = 0
                return z
            with torch.no_grad():
                rows.append(torch.cat([model.run_with_hooks(
                    t, fwd_hooks=[("blocks.1.attn.hook_z", zero)])[:, -1].argmax(-1)
                    for t, _ in data]))
        return torch.stack(rows).numpy()

    def start_at_layer() -> Any:
        rows = []
        with torch.no_grad():
            resid = [model(t, stop_at_layer=1) for t, _ in data]
            for h in range(4):
                def zero(z: torch.Tensor, hook: Any, h: int = h) -> torch.Tensor:
                    z = z.clone()
                    z[:, :, h] = 0
                    return z
                with model.hooks(fwd_hooks=[("blocks.1.attn.hook_z", zero)]):
                    rows.append(torch.cat([model(r, start_at_layer=1)[:, -1].argmax(-1)
                                           for r in resid]))
        return torch.stack(rows).numpy()

    times, out = interleaved({
        "scan": lambda: scan(wrapped, data, layer, unit="head", progress=False),
        "run_with_hooks": hooks_loop, "start_at_layer": start_at_layer}, repeats)
    same = np.array_equal(out["scan"].predictions, out["run_with_hooks"]) and \
        np.array_equal(out["start_at_layer"], out["run_with_hooks"])
    for other in ("run_with_hooks", "start_at_layer"):
        ratio = times[other] / times["scan"]
        row(f"TL hook_z heads, block 1, vs {other}", ratio, "", "", same,
            f"{out['scan'].method}; {times['scan']:.2f} s against {times[other]:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=8,
                        help="copies of the 597 test images for the ViT jobs")
    parser.add_argument("--loop-units", type=int, default=16,
                        help="conv5 channels the plain loop is timed on")
    parser.add_argument("--units", type=int, default=256, help="named conv5 checks")
    parser.add_argument("--only", default="vit,alexnet,plugin,named,hf,tl")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    only = set(args.only.split(","))
    print(f"{torch.get_num_threads()} torch thread, CPU seconds, medians of {args.repeats} "
          f"interleaved runs")
    print(f"{'job':44s} {'ratio':>9s} {'bound':>9s} {'target':>14s} {'':>5s}")
    if "vit" in only:
        vit_heads(args.repeats, args.copies)
    if "alexnet" in only:
        alexnet_conv5(args.repeats, args.loop_units)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(ROOT / "conftest.py", folder / "conftest.py")
        if "plugin" in only:
            plugin_every_unit(args.repeats, folder)
        if "named" in only:
            named_checks(args.repeats, folder, args.units)
    if "hf" in only:
        hugging_face(args.repeats)
    if "tl" in only:
        transformer_lens(args.repeats)


if __name__ == "__main__":
    main()
