"""Attention heads as units, against independent implementations.

Zero ablation of head ``h`` equals weight surgery on the output projection (its columns
``h*d:(h+1)*d`` zeroed); mean and constant ablation equal an explicit re-implementation
of attention that replaces the head's output before the projection. Both for
``nn.MultiheadAttention`` (inside ``nn.TransformerEncoderLayer``, batch first or not, in
eval under no-grad where torch would take its fused path) and for a Hugging Face-style
module with separate q/k/v/o projections.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from pytest_unitablate.core.ablation import ablate
from pytest_unitablate.core.heads import head_means, head_site
from pytest_unitablate.errors import ConfigError, UnitOutOfRangeError, UnsupportedModelError

E, H = 16, 4
D = E // H


class Encoder(nn.Module):
    """Two nn.TransformerEncoderLayers and a linear read-out of the first token."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.batch_first = batch_first
        layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=32, dropout=0.0,
                                           batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(E, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, T, E)
        h = self.encoder(x if self.batch_first else x.transpose(0, 1))
        return self.head(h[:, 0] if self.batch_first else h[0])


class HFAttention(nn.Module):
    """Hugging Face's layout: q/k/v/o projections, ``num_heads`` on the module."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = H, D
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(E, E) for _ in range(3))
        self.o_proj = nn.Linear(E, E)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape

        def split(p: nn.Linear) -> torch.Tensor:
            return p(x).view(n, t, H, D).transpose(1, 2)

        q, k, v = split(self.q_proj), split(self.k_proj), split(self.v_proj)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), dim=-1)
        return (att @ v).transpose(1, 2).reshape(n, t, E)  # heads concatenated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.heads(x))


class HFModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.attn = HFAttention()
        self.out = nn.Linear(E, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out((x + self.attn(x))[:, 0])


def _inputs() -> torch.Tensor:
    return torch.randn(6, 7, E, generator=torch.Generator().manual_seed(2))


def _mha_heads(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Every head's output of ``mha`` on ``x`` (batch first), concatenated: an explicit
    re-implementation of attention from the module's in-projection."""
    n, t, _ = x.shape
    q, k, v = torch.nn.functional.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)

    def split(z: torch.Tensor) -> torch.Tensor:
        return z.view(n, t, H, D).transpose(1, 2)

    att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(D), dim=-1)
    return (att @ split(v)).transpose(1, 2).reshape(n, t, E)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("head", range(H))
def test_zero_head_equals_weight_surgery_on_out_proj(batch_first: bool, head: int) -> None:
    model = Encoder(batch_first).eval()
    surgery = copy.deepcopy(model)
    with torch.no_grad():
        surgery.encoder.layers[1].self_attn.out_proj.weight[:, head * D:(head + 1) * D] = 0
    x = _inputs()
    with torch.inference_mode():
        expected = surgery(x)
        with ablate(model, {"encoder.layers.1.self_attn": [head]}, unit="head"):
            got = model(x)
        plain = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, expected, atol=1e-4)  # the head mattered
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("ablation", ["mean", 0.5])
def test_mean_and_constant_heads_equal_an_explicit_attention(ablation: object) -> None:
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    model = nn.Sequential()
    model.add_module("attn", mha)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = mha

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    wrapped = Wrap().eval()
    x = _inputs()
    with torch.no_grad():
        heads = _mha_heads(mha, x)
        means = head_means(wrapped, [(x, torch.zeros(6, dtype=torch.long))], "attn")
        torch.testing.assert_close(means, heads.reshape(-1, E).mean(0), rtol=1e-5, atol=1e-6)
        repl = means if ablation == "mean" else torch.full((E,), 0.5)
        edited = heads.clone()
        edited[..., 2 * D:3 * D] = repl[2 * D:3 * D]
        expected = mha.out_proj(edited)
        with ablate(wrapped, {"attn": [2]}, unit="head", ablation=ablation,  # type: ignore[arg-type]
                    means={"attn": means}):
            got = wrapped(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ablation", ["zero", "mean", -1.0])
def test_a_projection_site_ablates_the_heads_before_the_projection(ablation: object) -> None:
    model = HFModel().eval()
    x = _inputs()
    data = [(x, torch.zeros(6, dtype=torch.long))]
    site = head_site(model, "attn.o_proj")
    assert (site.kind, site.num_heads, site.head_dim) == ("projection", H, D)
    with torch.no_grad():
        heads = model.attn.heads(x)
        means = heads.reshape(-1, E).mean(0)
        repl = {"zero": torch.zeros(E), "mean": means}.get(str(ablation),
                                                             torch.full((E,), -1.0))
        edited = heads.clone()
        edited[..., 1 * D:2 * D] = repl[1 * D:2 * D]
        edited[..., 3 * D:4 * D] = repl[3 * D:4 * D]
        expected = model.out(x[:, 0] + model.attn.o_proj(edited)[:, 0])
        with ablate(model, {"attn.o_proj": [1, 3]}, unit="head", ablation=ablation,  # type: ignore[arg-type]
                    data=data):
            got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if ablation == "zero":  # and zero ablation is weight surgery on o_proj
        surgery = copy.deepcopy(model)
        with torch.no_grad():
            surgery.attn.o_proj.weight[:, D:2 * D] = 0
            surgery.attn.o_proj.weight[:, 3 * D:] = 0
            torch.testing.assert_close(got, surgery(x), rtol=1e-5, atol=1e-5)


def test_layers_without_heads_get_a_message_that_says_what_to_name() -> None:
    model = HFModel()
    with pytest.raises(UnsupportedModelError, match=r"name its output projection, e.g. "
                                                    "'attn.o_proj'"):
        head_site(model, "attn")
    for layer in ("out", "attn.q_proj"):  # a read-out, a projection *into* the heads
        with pytest.raises(UnsupportedModelError, match=r"is a Linear\. Its channels are "
                                                        r"not heads"):
            head_site(model, layer)
    with pytest.raises(ConfigError, match=r"num_heads: 8 for 'attn.o_proj', but 'attn' "
                                          r"says it has 4 heads"):
        head_site(model, "attn.o_proj", num_heads=8)
    lone = torch.nn.Sequential()
    lone.add_module("o_proj", torch.nn.Linear(E, E))  # nothing shows it is attention
    for num_heads in (None, 2):
        with pytest.raises(UnsupportedModelError, match="not an attention module"):
            head_site(lone, "o_proj", num_heads=num_heads)
    bare = torch.nn.Sequential()
    bare.add_module("block", torch.nn.Module())
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):  # attention by its parts
        bare.block.add_module(name, torch.nn.Linear(E, E))
    with pytest.raises(UnsupportedModelError, match="add num_heads: to the check"):
        head_site(bare, "block.o_proj")  # nothing says how many heads
    assert head_site(bare, "block.o_proj", num_heads=2).num_heads == 2
    with pytest.raises(ConfigError, match=r"takes 16 features, which do not split into 5 heads"):
        head_site(bare, "block.o_proj", num_heads=5)
    with pytest.raises(UnitOutOfRangeError, match=r"head 4 is out of range .* 4 heads"), \
            ablate(model, {"attn.o_proj": [4]}, unit="head"):
        pass


def test_torchvision_vit_heads_equal_weight_surgery() -> None:
    """torchvision's ViT calls its attention with need_weights=False, the case torch
    routes through the fused fast path in eval under no-grad."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(4)
    vit = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=4,
                            hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    layer = "encoder.layers.encoder_layer_1.self_attention"
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    for head in range(4):
        surgery = copy.deepcopy(vit)
        attn = surgery.encoder.layers.encoder_layer_1.self_attention
        with torch.no_grad():
            attn.out_proj.weight[:, head * 8:(head + 1) * 8] = 0
        with torch.inference_mode():
            with ablate(vit, {layer: [head]}, unit="head"):
                got = vit(x)
            torch.testing.assert_close(got, surgery(x), rtol=1e-5, atol=1e-5)


def test_head_scans_run_the_network_before_the_attention_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Heads of every block, the first included, are ablated from the output projection
    on: the network up to the attention's output runs once per batch (counted at the
    patch embedding), and the predictions are the naive loop's. (The engine also steps
    aside when the first batch measures it slower than the naive loop: a clock decision
    that a loaded machine can flip, so it is switched off here.)"""
    from torchvision.models import VisionTransformer

    import pytest_unitablate.core.scan.suffix as suffix_engine
    from pytest_unitablate import scan

    monkeypatch.setattr(suffix_engine, "slower_than_naive", lambda *args: False)

    torch.manual_seed(6)
    vit = VisionTransformer(image_size=16, patch_size=4, num_layers=3, num_heads=4,
                            hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    torch.nn.init.normal_(vit.heads.head.weight)  # torchvision starts it at zero
    x = torch.randn(44, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = vit(x).argmax(1)
    data = [(x[:24], y[:24]), (x[24:], y[24:])]  # batches of 24 and 20
    sizes: list[int] = []
    vit.conv_proj.register_forward_hook(lambda m, a, out: sizes.append(int(out.shape[0])))
    for block in range(3):
        layer = f"encoder.layers.encoder_layer_{block}.self_attention"
        means = {layer: head_means(vit, data, layer)}  # its own pass over the data
        for ablation in ("zero", "mean", 0.5):
            units = [0, 1, 2, 3, (1, 3)]
            naive = scan(vit, data, layer, unit="head", ablation=ablation, method="naive",
                         units=units, progress=False, means=means)
            sizes.clear()
            split = scan(vit, data, layer, unit="head", ablation=ablation, units=units,
                         progress=False, means=means)
            assert split.method == "prefix", split.reason
            assert split.plan.startswith("heads from the output projection on")
            # whole batches went through the patch embedding once each (the checks
            # against real ablated forwards take 16 examples, the layer's probe 2)
            assert sorted(n for n in sizes if n > 16) == [20, 24], (block, ablation, sizes)
            assert np.array_equal(split.predictions, naive.predictions)
            assert np.allclose(split.logprobs, naive.logprobs, atol=1e-4)
            assert not np.array_equal(split.predictions[0], y.numpy())  # a head mattered
