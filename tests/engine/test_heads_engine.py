"""``unit: head`` through the engine: every head's per-class drop equals weight surgery on
the output projection (an implementation that shares nothing with ours), for an
``nn.MultiheadAttention`` inside ``nn.TransformerEncoderLayer`` and for a Hugging
Face-style ``o_proj``; an ``N,T,C`` layer without ``channel_dim`` is refused, shape named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformer_source

from pytest_unitablate import run_spec

HEAD = "unitablate: 1\nmodel: {module}:model\ndata: {module}:data\n"
CLASSES = 4


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "tinyvit.py").write_text(transformer_source.SOURCE)
    (tmp_path / "hfattn.py").write_text(transformer_source.HF_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _predictions(model: torch.nn.Module, data: list[Any]) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x).argmax(1) for x, _ in data]).numpy()


def _drops(model: torch.nn.Module, surgery: torch.nn.Module, data: list[Any]
           ) -> dict[str, float]:
    labels = torch.cat([y for _, y in data]).numpy()
    before, after = _predictions(model, data) == labels, _predictions(surgery, data) == labels
    drops = {"overall": float(before.mean() - after.mean())}
    for k in range(CLASSES):
        mask = labels == k
        drops[str(k)] = float(before[mask].mean() - after[mask].mean())
    return drops


@pytest.mark.parametrize(("module", "layer", "weight"), [
    ("tinyvit", "encoder.layers.1.self_attn", "encoder.layers.1.self_attn.out_proj.weight"),
    ("hfattn", "attn.o_proj", "attn.o_proj.weight"),
])
def test_every_heads_class_drops_equal_weight_surgery(folder: Path, module: str, layer: str,
                                                     weight: str) -> None:
    import importlib

    source = importlib.import_module(module)
    checks = "".join(
        f"  - layer: {layer}\n    unit: head\n    units: [{h}]\n    expect:\n"
        + "".join(f"      {t}: {{max_drop: 100%}}\n" for t in ("overall", 0, 1, 2, 3))
        for h in range(4))
    (folder / "heads.yaml").write_text(HEAD.format(module=module) + "checks:\n" + checks)
    run = run_spec("heads.yaml")
    model, data = source.model(), source.data()
    hit = 0
    for h in range(4):
        surgery = copy.deepcopy(model)
        with torch.no_grad():
            dict(surgery.named_parameters())[weight][:, h * 4:(h + 1) * 4] = 0
        expected = _drops(model, surgery, data)
        hit += expected["overall"] != 0
        got = {r["target"]: r["drop"] for r in run.records if r["units"] == [h]}
        assert got == pytest.approx(expected, abs=1e-12), h
    assert hit, "no head changed a prediction: the comparison would prove nothing"
    assert {r["unit"] for r in run.records} == {"head"}


def test_layer_wide_checks_over_heads_name_the_deciding_head(folder: Path) -> None:
    (folder / "every.yaml").write_text(HEAD.format(module="tinyvit") + """\
checks:
  - layer: encoder.layers.1.self_attn
    unit: head
    every_unit:
      expect:
        overall: {max_drop: 1%}
""")
    run = run_spec("every.yaml", full_sweeps=True)
    (item,) = run.items
    assert item.outcome == "failed" and item.message is not None
    assert "deciding head: " in item.message and "of 4 heads miss it" in item.message
    # torch.fx cannot split nn.TransformerEncoderLayer's fused attention: the modules before
    # it are replayed (or, measured no cheaper on a loaded machine, plain forwards run)
    assert item.record["engine"] in ("replay", "naive")
    assert item.warnings == ()  # the plan, not a fallback


def test_a_token_layer_without_channel_dim_is_refused_with_its_shape(folder: Path) -> None:
    (folder / "axis.yaml").write_text(HEAD.format(module="tinyvit") + """\
checks:
  - layer: encoder.layers.0
    units: [5]
    expect:
      overall: {max_drop: 50%}
  - layer: encoder.layers.0
    name: features
    channel_dim: -1
    units: [5]
    expect:
      overall: {max_drop: 50%}
  - layer: encoder.layers.0
    name: outside
    channel_dim: 2
    units: [16]
    expect:
      overall: {max_drop: 50%}
""")
    run = run_spec("axis.yaml")
    first, stated, outside = run.items
    assert first.outcome == "failed" and first.message is not None
    assert first.message.splitlines()[0].startswith(
        "layer 'encoder.layers.0' outputs shape (N, 6, 16), which is not N,C,H,W or N,C")
    assert first.message.splitlines()[1].startswith(
        "axis.yaml:5: layer 'encoder.layers.0' outputs shape (N, 6, 16), which is not "
        "N,C,H,W or N,C: say which dimension holds its units, 'channel_dim: -1' for token "
        "features")
    assert stated.outcome == "passed"
    assert outside.message is not None and "whose output (N, 6, [16]) has 16 units along " \
        "dimension 2" in outside.message


def test_a_sequence_first_output_is_ablated_along_its_features(folder: Path) -> None:
    """(T, N, C): dimension 0 is not the batch. The check's feature is ablated (equal to a
    plain hook), the sweep runs without the batch-first engines, the batch dimension is
    refused as a unit dimension, and messages show where N is."""
    (folder / "seqfirst.py").write_text(transformer_source.SEQ_SOURCE)
    import seqfirst

    (folder / "seq.yaml").write_text(HEAD.format(module="seqfirst") + """\
checks:
  - layer: block
    channel_dim: -1
    units: [3]
    expect:
      overall: {max_drop: 50%}
  - layer: block
    channel_dim: -1
    every_unit:
      expect:
        overall: {max_drop: 50%}
  - layer: block
    name: batch
    channel_dim: 1
    units: [1]
    expect:
      overall: {max_drop: 50%}
  - layer: block
    name: unstated
    units: [1]
    expect:
      overall: {max_drop: 50%}
""")
    run = run_spec("seq.yaml", full_sweeps=True)
    named, every, batch, unstated = run.items
    model, data = seqfirst.model(), seqfirst.data()

    def zero_feature(_m: object, _a: object, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[..., 3] = 0
        return out

    handle = model.block.register_forward_hook(zero_feature)
    try:
        expected = _drops(seqfirst.model(), model, data)["overall"]
    finally:
        handle.remove()
    assert named.outcome == "passed" and named.record["drop"] == pytest.approx(expected)
    assert every.outcome == "passed" and every.record["units_total"] == 16
    assert every.record["engine"] == "naive" and "batch on dimension 1" in \
        every.record["engine_reason"]
    assert batch.message is not None and "has no such dimension besides the batch (N)" in \
        batch.message and "(6, N, 16)" in batch.message
    assert unstated.message is not None and "outputs shape (6, N, 16)" in unstated.message


REFS = '''
import torch

import tinyvit


def ref():
    x = tinyvit._inputs()[::3] * 0.5 + 0.3
    return [(x, torch.zeros(len(x), dtype=torch.long))]
'''


def _replaced_heads(model: torch.nn.Module, data: list[Any], head: int,
                    replace: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per example (correct, log p(true)) with head ``head``'s slice of ``o_proj``'s
    input set by ``replace(slice, batch index)``: a pre-hook, nothing of the engine."""
    o_proj = model.attn.o_proj
    offset = [0]

    def hook(_m: Any, args: Any) -> Any:
        x = args[0].clone()
        n = x.shape[0]
        x[..., head * 4:(head + 1) * 4] = replace(x[..., head * 4:(head + 1) * 4],
                                                  slice(offset[0], offset[0] + n))
        offset[0] += n
        return (x,)

    handle = o_proj.register_forward_pre_hook(hook)
    try:
        correct, logp = [], []
        with torch.no_grad():
            for x, y in data:
                out = torch.log_softmax(model(x).double(), 1)
                correct.append((out.argmax(1) == y).numpy())
                logp.append(out[torch.arange(len(y)), y].numpy())
    finally:
        handle.remove()
    return np.concatenate(correct), np.concatenate(logp)


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("ablation", ["mean", "resample"])
def test_a_heads_mean_and_resample_take_the_declared_references_values(
        folder: Path, ablation: str, plain: bool) -> None:
    """A head of a Hugging Face-style attention (the input of ``o_proj``), ablated with
    the values it takes on the declared reference: its mean there, or the documented draw
    of a reference example per evaluation example; through the layer's scan and through
    plain passes alike."""
    import hfattn

    from pytest_unitablate.core.resample import resample_index

    (folder / "refs.py").write_text(REFS)
    import refs

    model, data, reference = hfattn.model(), hfattn.data(), refs.ref()
    seen: list[torch.Tensor] = []
    handle = model.attn.o_proj.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0][..., 4:8].detach().clone()))
    with torch.no_grad():
        model(reference[0][0])
    handle.remove()
    values = seen[0]  # (32, T, 4): head 1 on the reference
    n = sum(len(y) for _, y in data)
    if ablation == "mean":
        def replace(_x: torch.Tensor, _rows: slice) -> torch.Tensor:
            return values.reshape(-1, 4).mean(0)
    else:
        j = torch.as_tensor(resample_index(n, len(values), draw=0, seed=0, same_data=False))

        def replace(_x: torch.Tensor, rows: slice) -> torch.Tensor:
            return values[j[rows]]
    base_c, base_lp = _replaced_heads(model, data, 1, lambda x, _rows: x)
    ab_c, ab_lp = _replaced_heads(model, data, 1, replace)
    (folder / "h.yaml").write_text(
        HEAD.format(module="hfattn") + f"reference: refs:ref\nablation: {ablation}\n"
        "checks:\n  - layer: attn.o_proj\n    unit: head\n    units: [1]\n    expect:\n"
        "      overall: {max_drop: 100%, max_logprob_drop: 100}\n")
    records = {r["constraint"]: r for r in run_spec("h.yaml", plain_passes=plain).records}
    assert records["max_drop"]["drop"] == pytest.approx(base_c.mean() - ab_c.mean(),
                                                        abs=1e-12)
    assert records["max_logprob_drop"]["drop"] == pytest.approx((base_lp - ab_lp).mean(),
                                                                abs=1e-5)
    assert records["max_logprob_drop"]["drop"] != 0


def test_a_head_the_layer_does_not_have_is_located_at_the_check(folder: Path) -> None:
    (folder / "h.yaml").write_text(
        HEAD.format(module="hfattn") + "checks:\n  - units: [1, 7]\n    unit: head\n"
        "    layer: attn.o_proj\n    expect: {overall: {max_drop: 100%}}\n")
    (item,) = run_spec("h.yaml").items
    assert item.outcome == "failed"
    assert "h.yaml:5: " in str(item.message) and "7" in str(item.message), item.message


def test_a_unit_outside_a_sequence_first_layer_names_its_shape(folder: Path) -> None:
    """``(T, N, C)`` blocks: the message shows where the batch is."""
    (folder / "seqfirst.py").write_text(transformer_source.SEQ_SOURCE)
    (folder / "s.yaml").write_text(
        HEAD.format(module="seqfirst") + "checks:\n  - layer: block\n    channel_dim: -1\n"
        "    units: [99]\n    expect: {overall: {max_drop: 100%}}\n")
    (item,) = run_spec("s.yaml").items
    assert item.outcome == "failed"
    assert "s.yaml:5: unit 99 is out of range for layer 'block', whose output (6, N, [16])" \
        in str(item.message), item.message
