"""Specs written as docs/libraries.md says, run through the engine on real libraries: a
TransformerLens model's heads (``unit: head`` and ``num_heads`` at the spec level) equal
weight surgery on ``W_O``; a torchvision Swin block's channels-last output is a located
refusal whose advice, followed, passes; an MLP projection's "heads" are refused whatever
``num_heads`` says; ``discover`` follows the same axis rules."""

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
import warnings
import torch
from torch import nn


class LastToken(nn.Module):
    def __init__(self, tl):
        super().__init__()
        self.tl = tl

    def forward(self, x):
        return self.tl(x)[:, -1, :4]


def tl_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(3)
        cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4,
                                      d_vocab=40, act_fn="relu", d_mlp=64)
        return LastToken(HookedTransformer(cfg)).eval()


def tokens():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 40, (96, 7), generator=g)
    with torch.no_grad():
        y = tl_model()(x).argmax(1)   # labels the model mostly gets right, not all
    flip = torch.rand(96, generator=g) < 0.3
    y[flip] = (y[flip] + 1) % 4
    return [(x[:48], y[:48]), (x[48:], y[48:])]


def swin():
    from torchvision.models.swin_transformer import SwinTransformer
    torch.manual_seed(0)
    return SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                           window_size=[2, 2], num_classes=3).eval()


def images():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 3, (32,), generator=g))]


def gpt2():
    from transformers import GPT2Config, GPT2ForSequenceClassification
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                     num_labels=4, pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return GPT2ForSequenceClassification(cfg).eval()
'''


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "libzoo.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _accuracy(model: torch.nn.Module, data: list) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x, _ in data]).numpy()
    labels = torch.cat([y for _, y in data]).numpy()
    return pred == labels, labels


def test_transformer_lens_heads_in_a_spec_equal_weight_surgery(folder: Path) -> None:
    import libzoo

    checks = "".join(f"  - layer: tl.blocks.1.attn.hook_z\n    units: [{h}]\n    expect:\n"
                     f"      overall: {{max_drop: 100%}}\n      0: {{max_drop: 100%}}\n"
                     for h in range(4))
    (folder / "tl.yaml").write_text("unitablate: 1\nmodel: libzoo:tl_model\n"
                                    "data: libzoo:tokens\nunit: head\nnum_heads: 4\n"
                                    "checks:\n" + checks)
    run = run_spec("tl.yaml")
    assert [i.outcome for i in run.items] == ["passed"] * 8, [i.message for i in run.items]
    model, data = libzoo.tl_model(), libzoo.tokens()
    before, labels = _accuracy(model, data)
    assert 0 < before.mean() < 1
    moved = 0
    for h in range(4):
        surgery = copy.deepcopy(model)
        with torch.no_grad():
            surgery.tl.blocks[1].attn.W_O[h] = 0
        after, _ = _accuracy(surgery, data)
        expected = {"overall": before.mean() - after.mean(),
                    "0": before[labels == 0].mean() - after[labels == 0].mean()}
        moved += expected["overall"] != 0
        got = {r["target"]: r["drop"] for r in run.records if r["units"] == [h]}
        assert got == pytest.approx(expected, abs=1e-12), h
    assert moved, "no head changed a prediction: the comparison would prove nothing"


def test_a_channels_last_block_is_a_located_refusal_whose_advice_passes(folder: Path) -> None:
    spec = folder / "swin.yaml"
    body = ("unitablate: 1\nmodel: libzoo:swin\ndata: libzoo:images\nchecks:\n"
            "  - layer: features.0\n{dim}    units: [5]\n    expect:\n"
            "      overall: {{max_drop: 100%}}\n")
    spec.write_text(body.format(dim=""))
    original = spec.read_bytes()
    (item,) = run_spec("swin.yaml").items
    assert item.outcome == "failed" and item.message is not None
    assert "swin.yaml:5: layer 'features.0' outputs shape (N, 8, 8, 16), which is " \
        "channels-last" in item.message
    assert "channel_dim: -1" in item.message
    assert spec.read_bytes() == original  # the user's spec is left as it was
    spec.write_text(body.format(dim="    channel_dim: -1\n"))
    (item,) = run_spec("swin.yaml").items
    assert item.outcome == "passed", item.message


def test_an_mlp_projection_named_as_heads_is_refused_at_its_line(folder: Path) -> None:
    (folder / "mlp.yaml").write_text(
        "unitablate: 1\nmodel: libzoo:gpt2\ndata: libzoo:tokens\noutput: logits\nchecks:\n"
        "  - layer: transformer.h.0.mlp.c_proj\n    unit: head\n    num_heads: 4\n"
        "    units: [1]\n    expect:\n      overall: {max_drop: 100%}\n")
    (item,) = run_spec("mlp.yaml").items
    assert item.outcome == "failed" and item.message is not None
    assert "mlp.yaml:6:" in item.message and "not an attention module" in item.message
    assert "'transformer.h.0.attn.c_proj'" in item.message


def test_discover_refuses_a_channels_last_layer_and_scans_it_when_told(folder: Path) -> None:
    from pytest_unitablate.analysis.discover import discover
    from pytest_unitablate.errors import ConfigError

    with pytest.raises(ConfigError, match="channels-last"):
        discover("libzoo:swin", "libzoo:images", ["features.0"], folder / "d.yaml")
    assert not (folder / "d.yaml").exists()
    discover("libzoo:swin", "libzoo:images", ["features.0"], folder / "d.yaml", channel_dim=-1)
    assert "channel_dim: -1" in (folder / "d.yaml").read_text()
