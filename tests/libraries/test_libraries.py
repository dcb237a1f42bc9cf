"""The libraries people use, built tiny and random (exactness needs no training): for each
family, heads and neurons through ``scan()`` equal weight surgery (or an independent hook),
and every output whose units are not on dimension 1 is refused with advice that, followed,
gives the exact number.

Weight surgery: zeroing a head's input slice of a linear output projection is zeroing its
columns; zeroing a neuron after ``Linear -> GELU`` is zeroing its row and bias (GELU(0) = 0).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pytest_unitablate.core.ablation import ablate
from pytest_unitablate.core.evaluation import evaluate
from pytest_unitablate.core.scan.api import scan
from pytest_unitablate.errors import ConfigError, UnsupportedModelError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::FutureWarning", "ignore::UserWarning")


@contextmanager
def surgery(*edits: tuple[torch.Tensor, Callable[[torch.Tensor], None]]) -> Iterator[None]:
    """Change parameters in place (``edit(param.data)``) inside the block; restore after."""
    kept = [p.detach().clone() for p, _ in edits]
    try:
        with torch.no_grad():
            for param, edit in edits:
                edit(param.data)
        yield
    finally:
        with torch.no_grad():
            for (param, _), old in zip(edits, kept, strict=True):
                param.copy_(old)


def zero_cols(start: int, stop: int) -> Callable[[torch.Tensor], None]:
    def edit(w: torch.Tensor) -> None:
        w[:, start:stop] = 0
    return edit


def zero_rows(start: int, stop: int) -> Callable[[torch.Tensor], None]:
    def edit(w: torch.Tensor) -> None:
        w[start:stop] = 0
    return edit


def logprobs(model: nn.Module, data: Any) -> torch.Tensor:
    return torch.as_tensor(evaluate(model, data).logprob)


def hooked_logprobs(model: nn.Module, data: Any, module: nn.Module,
                    hook: Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]
                    ) -> torch.Tensor:
    """``logprobs`` with ``hook`` (an independent oracle's edit) on ``module``'s output."""
    handle = module.register_forward_hook(hook)
    try:
        return logprobs(model, data)
    finally:
        handle.remove()


def assert_scan_equals_surgery(model: nn.Module, data: Any, layer: str, index: int,
                               edits: list[tuple[torch.Tensor, Callable[[torch.Tensor], None]]],
                               **kwargs: Any) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = scan(model, data, layer, units=[index], method="naive", progress=False,
                  **kwargs)
    with surgery(*edits):
        expected = logprobs(model, data)
    torch.testing.assert_close(torch.as_tensor(result.logprobs[0]), expected,
                               rtol=1e-4, atol=1e-5)
    assert not torch.equal(expected, logprobs(model, data)), "the unit changes nothing"
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def tokens(n: int = 24, length: int = 7, vocab: int = 40, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, length), generator=g), \
        torch.randint(0, 3, (n,), generator=g)


def images(n: int = 24, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 3, (n,), generator=g)


class Logits(nn.Module):
    """A Hugging Face classifier's ``.logits`` (the tool can also take ``output: logits``;
    here the layer names stay the library's behind ``hf.``)."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hf(x).logits


# --- Hugging Face transformers -------------------------------------------------------


def _hf(kind: str) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "gpt2":
            from transformers import GPT2Config, GPT2ForSequenceClassification

            cfg = GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                             num_labels=3, pad_token_id=0, bos_token_id=1, eos_token_id=1)
            return GPT2ForSequenceClassification(cfg).eval()
        if kind == "llama":
            from transformers import LlamaConfig, LlamaForSequenceClassification

            cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, num_labels=3, pad_token_id=0)
            return LlamaForSequenceClassification(cfg).eval()
        if kind == "bert":
            from transformers import BertConfig, BertForSequenceClassification

            cfg = BertConfig(vocab_size=40, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_labels=3,
                             max_position_embeddings=16)
            return BertForSequenceClassification(cfg).eval()
        from transformers import ViTConfig, ViTForImageClassification

        cfg = ViTConfig(image_size=16, patch_size=4, hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_labels=3)
        return ViTForImageClassification(cfg).eval()


@pytest.mark.parametrize(("kind", "layer", "width"), [
    ("gpt2", "hf.transformer.h.1.attn.c_proj", 32),
    ("llama", "hf.model.layers.1.self_attn.o_proj", 32),
    ("bert", "hf.bert.encoder.layer.1.attention.output.dense", 32),
    ("vit", "hf.vit.layers.1.attention.o_proj", 32),
])
def test_hugging_face_heads_equal_weight_surgery(kind: str, layer: str, width: int) -> None:
    model = Logits(_hf(kind))
    data = images() if kind == "vit" else tokens()
    proj = dict(model.named_modules())[layer]
    head = 2  # of 4, 8 features each; the count is read from the model (none stated)
    if type(proj).__name__ == "Conv1D":  # GPT-2: weight (in, out), the heads are rows
        edits = [(proj.weight, zero_rows(head * 8, head * 8 + 8))]
    else:
        edits = [(proj.weight, zero_cols(head * 8, head * 8 + 8))]
    assert_scan_equals_surgery(model, data, layer, head, edits, unit="head")


@pytest.mark.parametrize(("kind", "layer", "sibling"), [
    ("gpt2", "hf.transformer.h.0.mlp.c_proj", "hf.transformer.h.0.attn.c_proj"),
    ("bert", "hf.bert.encoder.layer.0.output.dense",
     "hf.bert.encoder.layer.0.attention.output.dense"),
])
def test_an_mlp_projection_is_never_read_as_heads(kind: str, layer: str,
                                                  sibling: str) -> None:
    model = Logits(_hf(kind))
    data = images() if kind == "vit" else tokens()
    for num_heads in (None, 4):  # whatever num_heads says
        with pytest.raises(UnsupportedModelError) as info:
            scan(model, data, layer, unit="head", num_heads=num_heads, progress=False)
        text = str(info.value)
        assert "not an attention module" in text and "add num_heads" not in text
        assert repr(sibling) in text  # the advice names the attention's projection


def test_hugging_face_mlp_neurons_equal_weight_surgery() -> None:
    model = Logits(_hf("vit"))
    data = images()
    layer = "hf.vit.layers.0.mlp.activation_fn"  # after Linear fc1, (N, T, 64)
    with pytest.raises(ConfigError, match="channel_dim: -1"):
        scan(model, data, layer, units=[5], progress=False)
    with pytest.raises(UnsupportedModelError, match="not heads"):
        scan(model, data, "hf.vit.layers.0.mlp.fc2", unit="head", num_heads=4,
             progress=False)
    fc = dict(model.named_modules())["hf.vit.layers.0.mlp.fc1"]
    assert_scan_equals_surgery(model, data, layer, 5, [(fc.weight, zero_rows(5, 6)),
                                                      (fc.bias, zero_rows(5, 6))],
                               channel_dim=-1)


def test_bert_head_count_is_found_beside_the_projection() -> None:
    from pytest_unitablate.core.heads import find_head_count

    model = Logits(_hf("bert"))
    count, where = find_head_count(model, "hf.bert.encoder.layer.0.attention.output.dense") \
        or (None, None)
    assert count == 4 and where == "hf.bert.encoder.layer.0.attention.self"


# --- timm ------------------------------------------------------------------------------


def test_timm_vit_heads_equal_weight_surgery() -> None:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4,
                              num_classes=3).eval()
    proj = model.blocks[1].attn.proj
    assert_scan_equals_surgery(model, images(), "blocks.1.attn.proj", 1,
                               [(proj.weight, zero_cols(8, 16))], unit="head")


def test_timm_convnext_channels_last_is_refused_then_exact() -> None:
    from timm.models.convnext import ConvNeXt

    torch.manual_seed(0)
    model = ConvNeXt(depths=(1, 1, 1, 1), dims=(16, 16, 16, 16), num_classes=3,
                     conv_mlp=False).eval()
    data = images(size=32)
    layer = "stages.0.blocks.0.mlp.fc1"  # Linear on N,H,W,C: (N, 4, 4, 64)
    assert scan(model, data, "stages.0.blocks.0", units=[1], progress=False).units == (1,)
    with pytest.raises(ConfigError, match=r"channels-last.*channel_dim: -1"):
        scan(model, data, layer, units=[5], progress=False)
    fc = model.stages[0].blocks[0].mlp.fc1
    assert_scan_equals_surgery(model, data, layer, 5, [(fc.weight, zero_rows(5, 6)),
                                                          (fc.bias, zero_rows(5, 6))],
                               channel_dim=-1)


# --- torchvision -----------------------------------------------------------------------


def _swin() -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                           window_size=[2, 2], num_classes=3).eval()


def test_torchvision_swin_channels_are_refused_on_dimension_1_then_exact() -> None:
    model = _swin()
    with pytest.raises(ConfigError) as info:
        scan(model, images(), "features.0", units=[5], progress=False)
    assert "(N, 8, 8, 16)" in str(info.value) and "channel_dim: -1" in str(info.value)
    norm = model.features[0][2]  # the LayerNorm that ends features.0
    assert_scan_equals_surgery(model, images(), "features.0", 5,
                               [(norm.weight, zero_rows(5, 6)), (norm.bias, zero_rows(5, 6))],
                               channel_dim=-1)


def test_torchvision_swin_heads_equal_weight_surgery_and_the_advice_works() -> None:
    model = _swin()
    with pytest.raises(UnsupportedModelError) as info:
        scan(model, images(), "features.1.0.attn.proj", unit="head", progress=False)
    assert "'features.1.0.attn'" in str(info.value)  # the advice: name the attention
    proj = model.features[1][0].attn.proj
    assert_scan_equals_surgery(model, images(), "features.1.0.attn", 1,
                               [(proj.weight, zero_cols(8, 16))], unit="head")
    with pytest.raises(ConfigError, match="per window"), \
            ablate(model, {"features.1.0.attn": [1]}, unit="head", ablation="resample",
                   resample={"features.1.0.attn": object()}):
        pass


def test_torchvision_convnext_block_is_channels_first_and_its_linear_is_not() -> None:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    model = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)],
                     num_classes=3).eval()
    data = images()
    with pytest.raises(ConfigError, match="channel_dim: -1"):
        scan(model, data, "features.1.0.block.3", units=[2], progress=False)
    # the block's output is N,C,H,W again (its last Permute): dimension 1, checked against
    # an independent hook on that dimension
    result = scan(model, data, "features.1.0", units=[3], method="naive", progress=False)

    def zero_channel(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, 3] = 0
        return out

    expected = hooked_logprobs(model, data, model.features[1][0], zero_channel)
    torch.testing.assert_close(torch.as_tensor(result.logprobs[0]), expected,
                               rtol=1e-4, atol=1e-5)


# --- TransformerLens -------------------------------------------------------------------


class LastToken(nn.Module):
    def __init__(self, tl: nn.Module) -> None:
        super().__init__()
        self.tl = tl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tl(x)[:, -1, :3]


def _tl() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        torch.manual_seed(0)
        cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4,
                                      d_vocab=40, act_fn="relu", d_mlp=64,
                                      use_attn_result=True)
        return LastToken(HookedTransformer(cfg)).eval()


def test_transformer_lens_heads_on_hook_z_equal_weight_surgery() -> None:
    model = _tl()
    data = tokens()
    w_o = model.tl.blocks[1].attn.W_O  # (heads, d_head, d_model)
    assert_scan_equals_surgery(model, data, "tl.blocks.1.attn.hook_z", 2,
                               [(w_o, zero_rows(2, 3))], unit="head")
    assert_scan_equals_surgery(model, data, "tl.blocks.1.attn.hook_result", 2,
                               [(w_o, zero_rows(2, 3))], unit="head")


def test_transformer_lens_hook_z_is_refused_without_an_axis() -> None:
    model = _tl()
    with pytest.raises(ConfigError) as info:
        scan(model, tokens(), "tl.blocks.0.attn.hook_z", units=[1], progress=False)
    assert "unit: head" in str(info.value) and "(N, 7, 4, 8)" in str(info.value)
    with pytest.raises(UnsupportedModelError, match="hook_z"):
        scan(model, tokens(), "tl.blocks.0.attn", unit="head", progress=False)


def test_transformer_lens_head_mean_ablation_is_per_feature() -> None:
    """Mean ablation of a head replaces each of its d_head features by that feature's mean
    over examples and positions, as TransformerLens users write it."""
    model = _tl()
    data = tokens()
    layer = "tl.blocks.1.attn.hook_z"
    result = scan(model, data, layer, units=[1], ablation="mean", method="naive",
                  unit="head", progress=False)
    z: list[torch.Tensor] = []
    hook = model.tl.blocks[1].attn.hook_z
    handle = hook.register_forward_hook(lambda m, a, out: z.append(out.detach()))
    try:
        logprobs(model, data)
    finally:
        handle.remove()
    mean = torch.cat(z).double().mean(dim=(0, 1)).float()  # (heads, d_head)

    def replace(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, :, 1, :] = mean[1]
        return out

    expected = hooked_logprobs(model, data, hook, replace)
    torch.testing.assert_close(torch.as_tensor(result.logprobs[0]), expected,
                               rtol=1e-4, atol=1e-5)


def test_transformer_lens_head_resample_takes_each_head_from_another_example() -> None:
    """Resample ablation of a head: each example's head output (all d_head features, every
    position) is the one the documented index draws, from the reference examples."""
    import numpy as np

    from pytest_unitablate.core.heads import head_values
    from pytest_unitablate.core.resample import ResampleSource, resample_index

    model = _tl()
    x, y = tokens()
    layer = "tl.blocks.1.attn.hook_z"
    values = head_values(model, [(x, y)], layer)  # (N, T, heads * d_head), batch first
    index = resample_index(len(y), len(y), draw=0, seed=0, same_data=True)
    source = ResampleSource(values, index)
    result = scan(model, [(x, y)], layer, units=[3], ablation="resample", unit="head",
                  resample=[source], progress=False)
    taken = values.reshape(len(y), 7, 4, 8)[torch.as_tensor(np.asarray(index))]
    hook = model.tl.blocks[1].attn.hook_z

    def replace(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, :, 3, :] = taken[:, :, 3, :]
        return out

    expected = hooked_logprobs(model, [(x, y)], hook, replace)
    torch.testing.assert_close(torch.as_tensor(result.logprobs[0]), expected,
                               rtol=1e-4, atol=1e-5)


# --- what a stranger found: ties between a shape's sizes, and advice --------------------


def test_a_token_layer_as_long_as_it_is_wide_is_not_read_as_channels() -> None:
    """GPT-2's and Llama's MLP activation are registered after the layer whose width they
    do not have; with as many tokens as the model is wide, dimension 1 matches that width.
    No convolution is anywhere: refused, not token 5 ablated."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    model = Logits(LlamaForSequenceClassification(LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_labels=3, pad_token_id=0)).eval())
    data = [(torch.randint(1, 50, (4, 32)), torch.randint(0, 3, (4,)))]  # 32 tokens
    with pytest.raises(ConfigError, match="channel_dim"):
        scan(model, data, "hf.model.layers.0.mlp.act_fn", units=[5], progress=False)
    gpt2 = Logits(_hf("gpt2"))
    with pytest.raises(ConfigError, match="channel_dim"):
        scan(gpt2, [(torch.randint(1, 40, (4, 16)), torch.randint(0, 3, (4,)))],
             "hf.transformer.h.0.mlp.act", units=[5], progress=False)


def test_a_patch_embedding_with_as_many_patches_as_features_is_refused() -> None:
    """A convolution whose output the forward flattens into tokens: the rank changed, so
    the convolution says nothing about the tokens' layout."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2,
                              num_classes=3).eval()  # 16 patches of 16 features
    with pytest.raises(ConfigError, match="channel_dim"):
        scan(model, images(), "patch_embed", units=[5], progress=False)


def test_a_cube_shaped_convnext_block_gets_no_channels_last_advice() -> None:
    from timm.models.convnext import ConvNeXt

    torch.manual_seed(0)
    model = ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), num_classes=3).eval()
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,)))]  # stage 0: (N, 8, 8, 8)
    with pytest.raises(ConfigError) as info:
        scan(model, data, "stages.0.blocks.0", units=[3], progress=False)
    assert "which is channels-last" not in str(info.value)  # not told: -1 would be a column
    assert "do not tell" in str(info.value) and "'channel_dim: 1' for N,C,H,W" in str(info.value)


def test_a_stated_channel_dim_that_the_modules_contradict_is_refused() -> None:
    model = _swin()
    with pytest.raises(ConfigError, match=r"channel_dim: 1 for layer 'features.1.0' reads "
                                          r"dimension 1.*channel_dim: -1"):
        scan(model, images(), "features.1.0", units=[3], channel_dim=1, progress=False)
    with pytest.raises(ConfigError, match=r"channel_dim: -1 for layer 'features.0.0'.*"
                                          r"channel_dim: 1"):
        scan(model, images(), "features.0.0", units=[3], channel_dim=-1, progress=False)


def test_attention_modules_without_their_projection_name_it() -> None:
    from pytest_unitablate.core.heads import head_site

    bert = Logits(_hf("bert"))
    for layer in ("hf.bert.encoder.layer.0.attention",
                  "hf.bert.encoder.layer.0.attention.self"):
        with pytest.raises(UnsupportedModelError,
                           match=r"name 'hf\.bert\.encoder\.layer\.0\.attention\.output\.dense'"):
            head_site(bert, layer)
    with pytest.raises(UnsupportedModelError, match=r"'tl.blocks.1.attn.hook_z'"):
        head_site(_tl(), "tl.blocks.1.mlp.hook_post")


# --- the replay engine: what torch.fx cannot split ------------------------------------


@pytest.mark.parametrize(("kind", "layer", "kwargs"), [
    ("gpt2", "hf.transformer.h.1.attn.c_proj", {"unit": "head"}),
    ("llama", "hf.model.layers.1.self_attn.o_proj", {"unit": "head"}),
    ("bert", "hf.bert.encoder.layer.1.attention.output.dense", {"unit": "head"}),
    ("vit", "hf.vit.layers.1.attention.o_proj", {"unit": "head"}),
    ("vit", "hf.vit.layers.1.mlp.activation_fn", {"channel_dim": -1}),
    ("tl", "tl.blocks.1.attn.hook_z", {"unit": "head"}),
])
@pytest.mark.parametrize("ablation", ["zero", "mean", 0.5])
def test_untraceable_libraries_replay_what_runs_before_the_layer_exactly(
        kind: str, layer: str, kwargs: dict[str, Any], ablation: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Hugging Face and TransformerLens models branch in Python (torch.fx cannot split
    them): the modules that finish before the layer are replayed, and every row equals the
    naive loop's (an independent forward per row). The clock that could send a cheap
    layer back to plain forwards is switched off."""
    import pytest_unitablate.core.scan.replay as replay

    monkeypatch.setattr(replay, "cheaper", lambda *args: True)
    model = _tl() if kind == "tl" else Logits(_hf(kind))
    data = images() if kind == "vit" else tokens()
    rows = [0, 1, (2, 3), 3] if kwargs.get("unit") == "head" else [5, (1, 9), 60]
    auto = scan(model, data, layer, units=rows, ablation=ablation, progress=False, **kwargs)
    naive = scan(model, data, layer, units=rows, ablation=ablation, method="naive",
                 progress=False, **kwargs)
    assert auto.method == "replay", auto.reason
    assert "torch.fx cannot trace" in auto.reason
    assert np.array_equal(auto.predictions, naive.predictions)
    torch.testing.assert_close(torch.as_tensor(auto.logprobs), torch.as_tensor(naive.logprobs),
                               rtol=1e-4, atol=1e-5)
    assert not np.array_equal(auto.logprobs[0], auto.baseline.logprob)  # a row changed


def test_a_replayed_layer_measured_no_cheaper_finishes_with_plain_forwards(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """When the first batch measures a replayed pass no cheaper than a whole forward, the
    rows go on as plain ablated forwards (nothing measured is thrown away)."""
    import pytest_unitablate.core.scan.replay as replay

    monkeypatch.setattr(replay, "cheaper", lambda *args: False)
    model, data = Logits(_hf("gpt2")), tokens()
    layer = "hf.transformer.h.0.attn.c_proj"
    auto = scan(model, data, layer, unit="head", progress=False)
    naive = scan(model, data, layer, unit="head", method="naive", progress=False)
    assert auto.method == "naive" and "plain forwards from there on" in auto.reason
    assert np.array_equal(auto.predictions, naive.predictions)
