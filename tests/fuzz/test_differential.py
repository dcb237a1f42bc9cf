"""Differential fuzzing of hook correctness: generated architectures against an oracle
written here, on the axis this file knows to be right.

A hypothesis strategy builds small random models from a grammar: convolutions and
linears, batch, layer and RMS norms, activations, pooling, residual blocks, permutes to
channels-last and back (a ConvNeXt-style block), flatten, and attention four ways
(``nn.MultiheadAttention`` batch-first and sequence-first, a Hugging Face-style q/k/v/o
module, a TransformerLens-style ``hook_z`` with a head axis); the logits come out as a
tensor, a tuple or a dict. For a random layer, unit kind, units and ablation, the tool
(``scan``, and the engine through ``run_spec``; the plugin's JSON report in the long
profile) must give each example's log-probability of the true class as the oracle does
(its own forward hook for channels, weight surgery on the projection for heads), or refuse
with a message that names the layer. A silent wrong answer fails.

Profiles: bounded and seeded in ``make test`` (``derandomize``, about 40 models); ``make
fuzz`` (``UNITABLATE_FUZZ=long``) runs hundreds, with the plugin too. Every failure it
finds becomes a named regression test.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from attention_models import HFAttention, TLAttention
from hypothesis import HealthCheck, given, settings
from hypothesis import event as _event
from hypothesis import strategies as st
from torch import nn

from pytest_unitablate import run_spec, scan
from pytest_unitablate.errors import UnitAblateError

LONG = os.environ.get("UNITABLATE_FUZZ") == "long"
CLASSES = 4


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class SeqFirst(nn.Module):
    """``nn.MultiheadAttention`` used sequence-first inside a batch-first model."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.transpose(0, 1)
        return self.attn(t, t, t, need_weights=False)[0].transpose(0, 1)  # type: ignore[no-any-return]


class BatchFirst(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]  # type: ignore[no-any-return]


class Residual(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)  # type: ignore[no-any-return]


class Net(nn.Module):
    def __init__(self, blocks: nn.Sequential, head: nn.Module, tokens: bool, out: str
                 ) -> None:
        super().__init__()
        self.blocks, self.head, self.tokens, self.out = blocks, head, tokens, out

    def forward(self, x: torch.Tensor) -> Any:
        h = self.blocks(x)
        pooled = h.mean(dim=1) if self.tokens else h.mean(dim=(2, 3))
        logits = self.head(pooled)
        if self.out == "tuple":
            return pooled, logits
        if self.out == "dict":
            return {"features": pooled, "logits": logits}
        return logits


@dataclass
class Target:
    """A layer and what the oracle knows about it: ``axis`` of its units (channels), or
    how to reach a head's projection weight (heads)."""

    layer: str
    unit: str  # "channel" or "head"
    axis: int = 1
    width: int = 0
    heads: int = 0
    projection: str = ""  # "mha", "linear", "tl"


@dataclass
class Built:
    model: Net
    x: torch.Tensor
    y: torch.Tensor
    targets: list[Target] = field(default_factory=list)
    output: int | str | None = None


ACTS = [nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU]


@st.composite
def networks(draw: st.DrawFn) -> Built:
    seed = draw(st.integers(0, 2 ** 16))
    torch.manual_seed(seed)
    tokens = draw(st.booleans())
    layers: list[nn.Module] = []
    targets: list[Target] = []
    width = 8
    if tokens:
        layers.append(nn.Linear(6, width))
        targets.append(Target("blocks.0", "channel", -1, width))
        for _ in range(draw(st.integers(1, 3))):
            at = f"blocks.{len(layers)}"
            kind = draw(st.sampled_from(["mlp", "norm", "rms", "res", "mha", "mha_seq", "hf",
                                         "tl"]))
            if kind == "mlp":
                layers.append(nn.Sequential(nn.Linear(width, width), draw(st.sampled_from(ACTS))()))
                targets.append(Target(f"{at}.0", "channel", -1, width))
            elif kind in ("norm", "rms"):
                layers.append(nn.LayerNorm(width) if kind == "norm" else nn.RMSNorm(width))
                targets.append(Target(at, "channel", -1, width))
            elif kind == "res":
                layers.append(Residual(nn.Sequential(nn.Linear(width, width), nn.GELU())))
                targets.append(Target(f"{at}.inner.0", "channel", -1, width))
            elif kind == "mha":
                layers.append(Residual(BatchFirst(width, 2)))
                targets.append(Target(f"{at}.inner.attn", "head", heads=2, width=width,
                                      projection="mha"))
            elif kind == "mha_seq":
                layers.append(Residual(SeqFirst(width, 2)))
                targets.append(Target(f"{at}.inner.attn", "head", heads=2, width=width,
                                      projection="mha"))
            elif kind == "hf":
                layers.append(Residual(HFAttention(width, 2)))
                targets.append(Target(f"{at}.inner.o_proj", "head", heads=2, width=width,
                                      projection="linear"))
            else:
                layers.append(Residual(TLAttention(width, 2)))
                targets.append(Target(f"{at}.inner.hook_z", "head", heads=2, width=width,
                                      projection="tl"))
                # its units as channels: (batch, position, head, d_head), heads on axis 2
                targets.append(Target(f"{at}.inner.hook_z", "channel", 2, 2))
        x = torch.randn(24, 5, 6)
    else:
        layers.append(nn.Conv2d(3, width, 3, padding=1))
        targets.append(Target("blocks.0", "channel", 1, width))
        size = 6
        for _ in range(draw(st.integers(1, 3))):
            at = f"blocks.{len(layers)}"
            kind = draw(st.sampled_from(["conv", "bn", "act", "pool", "res", "convnext",
                                         "cl_norm"]))
            if kind == "conv":
                layers.append(nn.Conv2d(width, width, 3, padding=1))
                targets.append(Target(at, "channel", 1, width))
            elif kind == "bn":
                bn = nn.BatchNorm2d(width)
                bn.running_mean.uniform_(-0.3, 0.3)
                layers.append(bn)
                targets.append(Target(at, "channel", 1, width))
            elif kind == "act":
                layers.append(draw(st.sampled_from(ACTS))())
                targets.append(Target(at, "channel", 1, width))
            elif kind == "pool" and size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
                targets.append(Target(at, "channel", 1, width))
            elif kind == "res":
                layers.append(Residual(nn.Sequential(nn.Conv2d(width, width, 3, padding=1),
                                                     nn.ReLU())))
                targets.append(Target(f"{at}.inner.0", "channel", 1, width))
            elif kind == "convnext":  # channels-last inside: N,H,W,C at the Linear
                layers.append(Residual(nn.Sequential(Permute(0, 2, 3, 1),
                                                     nn.Linear(width, width), nn.GELU(),
                                                     Permute(0, 3, 1, 2))))
                targets.append(Target(f"{at}.inner.1", "channel", -1, width))
            elif kind == "cl_norm":
                layers.append(nn.Sequential(Permute(0, 2, 3, 1), nn.LayerNorm(width),
                                            Permute(0, 3, 1, 2)))
                targets.append(Target(f"{at}.1", "channel", -1, width))
        x = torch.randn(24, 3, 6, 6)
    out = draw(st.sampled_from(["tensor", "tuple", "dict"]))
    model = Net(nn.Sequential(*layers), nn.Linear(width, CLASSES), tokens, out).eval()
    with torch.no_grad():
        logits = _logits(model(x), out)
    # labels: mostly the model's own answers, some not (the baseline is not 100%)
    y = logits.argmax(1)
    y[::5] = (y[::5] + 1) % CLASSES
    return Built(model, x, y, targets, {"tensor": None, "tuple": 1, "dict": "logits"}[out])


def _logits(out: Any, kind: str) -> torch.Tensor:
    return out if kind == "tensor" else out[1] if kind == "tuple" else out["logits"]


def _true_logprob(model: Net, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        lp = torch.log_softmax(_logits(model(x), model.out), 1)
    return lp[torch.arange(len(y)), y].numpy()


def _oracle(built: Built, t: Target, units: list[int], ablation: Any) -> np.ndarray:
    """Each example's log p(true) with ``units`` ablated, the test's own way."""
    model, x, y = built.model, built.x, built.y
    modules = dict(model.named_modules())
    if t.unit == "channel":
        module = modules[t.layer]
        if ablation == "mean":
            seen: list[torch.Tensor] = []
            h = module.register_forward_hook(lambda m, a, o: seen.append(o.detach()))
            with torch.no_grad():
                model(x)
            h.remove()
            out = seen[0]
            dims = [d for d in range(out.dim()) if d != out.dim() + t.axis
                    and d != t.axis]
            value = out.mean(dim=dims)
        else:
            value = torch.full((t.width,), 0.0 if ablation == "zero" else float(ablation))

        def hook(m: nn.Module, a: Any, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            moved = out.movedim(t.axis, 0)
            for u in units:
                moved[u] = value[u]
            return moved.movedim(0, t.axis)

        handle = module.register_forward_hook(hook)
        try:
            return _true_logprob(model, x, y)
        finally:
            handle.remove()
    # heads: the projection's columns of each head zeroed, r_h @ W_h added to its bias
    size = t.width // t.heads
    if ablation == "mean":
        from pytest_unitablate.core.heads import head_means

        value = head_means(model, (x, y), t.layer)
    else:
        value = torch.full((t.width,), 0.0 if ablation == "zero" else float(ablation))
    cut = _copy(model)
    parent = dict(cut.named_modules())[t.layer.rsplit(".", 1)[0]] if t.projection != "mha" \
        else dict(cut.named_modules())[t.layer]
    with torch.no_grad():
        for h in units:
            part = slice(h * size, (h + 1) * size)
            if t.projection == "tl":
                parent.b_O += value[part] @ parent.W_O[h]
                parent.W_O[h] = 0
            else:
                proj = parent.out_proj if t.projection == "mha" else parent.o_proj
                proj.bias += proj.weight[:, part] @ value[part]
                proj.weight[:, part] = 0
    return _true_logprob(cut, x, y)


def _copy(model: Net) -> Net:
    import copy

    return copy.deepcopy(model)


def _agree(got: np.ndarray, want: np.ndarray) -> bool:
    return bool(np.allclose(got, want, atol=2e-4, rtol=1e-4))


def event(text: str) -> None:
    """hypothesis's ``event`` inside a test; nothing outside one (a hunt by hand)."""
    with contextlib.suppress(Exception):
        _event(text)


def _refused(exc: Exception, layer: str) -> bool:
    return isinstance(exc, UnitAblateError) and repr(layer) in str(exc)


def check_one(built: Built, t: Target, units: list[int], ablation: Any) -> str | None:
    """None when the tool agrees with the oracle or refuses naming the layer, both when it
    must find the units' axis itself and when it is told; else what it got wrong."""
    want = _oracle(built, t, units, ablation)
    ways: list[dict[str, Any]] = [{"unit": "head"}] if t.unit == "head" else [
        {}, {"channel_dim": t.axis}]
    for kwargs in ways:
        try:
            result = scan(built.model, (built.x, built.y), t.layer, units=[tuple(units)],
                          ablation=ablation, output=built.output, progress=False, **kwargs)
        except Exception as exc:  # a refusal must name the layer
            event(f"refused ({'told' if kwargs.get('channel_dim') else 'found'}): "
                  f"{type(exc).__name__}")
            if not _refused(exc, t.layer):
                return f"scan{kwargs} raised {exc!r}"
            continue
        event(f"compared: {t.unit} on axis {t.axis if t.unit == 'channel' else 'head'} "
              f"({'told' if kwargs.get('channel_dim') else 'found'}), engine {result.method}")
        got = np.asarray(result.logprobs[0], dtype=np.float64)
        if not _agree(got, want):
            return (f"scan{kwargs} ({result.method}) of {t.layer} {t.unit}s {units} "
                    f"({ablation}) is silently wrong: max |diff| "
                    f"{np.abs(got - want).max():.3g}")
    return None


@st.composite
def cases(draw: st.DrawFn) -> tuple[Built, Target, list[int], Any]:
    built = draw(networks())
    t = draw(st.sampled_from(built.targets))
    count = t.heads if t.unit == "head" else t.width
    units = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=2, unique=True))
    ablation = draw(st.sampled_from(["zero", "mean", 0.5]))
    return built, t, units, ablation


PROFILE = settings(max_examples=1000 if LONG else 120, deadline=None, derandomize=not LONG,
                   suppress_health_check=list(HealthCheck), database=None)


@PROFILE
@given(case=cases())
def test_scan_equals_the_oracle_or_refuses_naming_the_layer(
        case: tuple[Built, Target, list[int], Any]) -> None:
    problem = check_one(*case)
    assert problem is None, problem


SPEC = """\
unitablate: 1
model: net
data: data
{output}classes: [a, b, c, d]
checks:
  - layer: {layer}
{unit}    units: [{units}]
    ablation: {ablation}
    expect:
      overall: {{max_logprob_drop: 100}}
"""


def _spec_text(built: Built, t: Target, units: list[int], ablation: Any) -> str:
    return SPEC.format(
        output=f"output: {built.output}\n" if built.output is not None else "", layer=t.layer,
        unit="    unit: head\n" if t.unit == "head" else "",
        units=", ".join(map(str, units)),
        ablation=ablation if isinstance(ablation, str) else f"{{constant: {ablation}}}")


@settings(max_examples=200 if LONG else 15, deadline=None, derandomize=not LONG,
          suppress_health_check=list(HealthCheck), database=None)
@given(case=cases())
def test_the_engine_records_the_oracles_drop_or_a_located_problem(
        case: tuple[Built, Target, list[int], Any], tmp_path_factory: Any) -> None:
    built, t, units, ablation = case
    want = _oracle(built, t, units, ablation)
    base = _true_logprob(built.model, built.x, built.y)
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_text(_spec_text(built, t, units, ablation))
    run = run_spec(path, fixtures={"net": built.model, "data": (built.x, built.y)})
    (item,) = run.items
    if item.record.get("problem"):  # a located refusal: the spec line that needs a change
        assert item.message is not None and "spec.yaml:" in item.message, item.message
        return
    assert item.outcome == "passed", item.message
    drop = float((base - want).mean())
    assert item.record["drop"] == pytest.approx(drop, abs=2e-4), (t, units, ablation)


@pytest.mark.skipif(not LONG, reason="the plugin's JSON report: make fuzz (a process each)")
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck),
          database=None)
@given(case=cases())
def test_the_plugins_report_records_the_oracles_drop(
        case: tuple[Built, Target, list[int], Any], tmp_path_factory: Any) -> None:
    built, t, units, ablation = case
    folder = tmp_path_factory.mktemp("plugin")
    torch.save({"model": built.model, "x": built.x, "y": built.y}, folder / "case.pt")
    (folder / "conftest.py").write_text(textwrap.dedent(f"""
        import sys, torch, pytest
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
        import test_differential  # noqa: F401  (the classes the pickle names)
        CASE = torch.load("case.pt", weights_only=False)

        @pytest.fixture(scope="session")
        def net():
            return CASE["model"]

        @pytest.fixture(scope="session")
        def data():
            return (CASE["x"], CASE["y"])
        """))
    (folder / "spec.yaml").write_text(_spec_text(built, t, units, ablation))
    proc = subprocess.run([sys.executable, "-m", "pytest", "--unitablate-spec", "spec.yaml",
                           "-p", "no:randomly", "--unitablate-report", "r.json", "-q"],
                          cwd=folder, capture_output=True, text=True)
    (record,) = json.loads((folder / "r.json").read_text())["items"]
    if record.get("problem"):  # a located refusal: the report says which line, and why
        assert record.get("line") and repr(t.layer) in (record.get("reason") or ""), \
            proc.stdout[-2000:]
        return
    assert record["outcome"] == "passed", proc.stdout[-2000:]
    want = _oracle(built, t, units, ablation)
    base = _true_logprob(built.model, built.x, built.y)
    assert record["drop"] == pytest.approx(float((base - want).mean()), abs=2e-4)
