"""Where a layer's head count is read (:func:`find_head_count`) and what a TransformerLens
hook point resolves to (:func:`head_site`), each answer and each refusal word for word,
on small module trees built to tell the rules apart."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from attention_models import HFAttention, HookPoint, TLAttention
from torch import nn

from pytest_unitablate.core.heads import HeadSite, find_head_count, head_site
from pytest_unitablate.errors import ConfigError, UnsupportedModelError


def _with(count: int | None = None, **children: nn.Module) -> nn.Module:
    module = nn.Module()
    if count is not None:
        module.num_heads = count
    for name, child in children.items():
        module.add_module(name, child)
    return module


def test_the_count_is_read_from_the_layer_up_and_says_where() -> None:
    hf = _with(blocks=nn.ModuleList([_with(attn=HFAttention(8, 4))]))
    assert find_head_count(hf, "blocks.0.attn") == (4, "blocks.0.attn")
    assert find_head_count(hf, "blocks.0.attn.o_proj") == (4, "blocks.0.attn")
    # the layer's own count comes before a sibling's that is listed first
    siblings = _with(first=_with(2), attn=_with(4, out_proj=nn.Linear(8, 8)))
    assert find_head_count(siblings, "attn") == (4, "attn")
    # BERT: the count sits on attention.self, beside attention.output.dense
    bert = _with(enc=_with(attention=_with(self=_with(12), output=_with(
        dense=nn.Linear(8, 8)))))
    assert find_head_count(bert, "enc.attention.output.dense") == (12, "enc.attention.self")
    # a top-level layer: the model itself says it
    assert find_head_count(_with(6, proj=nn.Linear(8, 8)), "proj") == (6, "the model")
    # the layer's own children are not asked (a head count there is another module's)
    inner = _with(attn=_with(core=_with(2), proj=nn.Linear(8, 8)))
    assert find_head_count(inner, "attn") is None


def test_the_count_is_looked_for_three_levels_up_then_in_the_config() -> None:
    deep = _with(a=_with(3, b=_with(c=_with(d=_with(e=nn.Linear(8, 8))))))
    assert find_head_count(deep, "a.b.c.d.e") is None  # "a" is four levels up
    deep.config = SimpleNamespace(num_attention_heads=5)
    assert find_head_count(deep, "a.b.c.d.e") == (5, "the model's config")


class TLBlock(nn.Module):
    def __init__(self, with_result: bool = False) -> None:
        super().__init__()
        self.attn = TLAttention(16, 4)
        if with_result:
            self.attn.hook_result = HookPoint()
        self.hook_resid_post = HookPoint()


def _tl() -> nn.Module:
    return _with(hook_embed=HookPoint(), blocks=nn.ModuleList([TLBlock(), TLBlock(True)]),
                 blk=TLBlock())


def test_a_transformerlens_head_axis_is_a_hook_site() -> None:
    model = _tl()
    z = model.blocks[1].attn.hook_z
    assert head_site(model, "blocks.1.attn.hook_z") == HeadSite(
        "blocks.1.attn.hook_z", "hook", z, 4, 4)
    result = model.blocks[1].attn.hook_result
    assert head_site(model, "blocks.1.attn.hook_result") == HeadSite(
        "blocks.1.attn.hook_result", "hook", result, 4, None)  # its width is the model's
    assert head_site(model, "blk.attn.hook_z", num_heads=4).num_heads == 4
    with pytest.raises(ConfigError, match=r"^num_heads: 2 for 'blk.attn.hook_z', but "
                                          r"'blk.attn' says it has 4 heads$"):
        head_site(model, "blk.attn.hook_z", num_heads=2)


def test_a_hook_point_without_a_head_axis_names_the_one_to_use() -> None:
    model = _tl()
    for layer, near in (("blocks.1.hook_resid_post", "blocks.1.attn"),
                        ("blk.hook_resid_post", "blk.attn"),
                        ("blocks.0.attn.hook_z_other", "blocks.0.attn")):
        if layer.endswith("other"):
            model.blocks[0].attn.add_module("hook_z_other", HookPoint())
        with pytest.raises(UnsupportedModelError) as raised:
            head_site(model, layer)
        assert str(raised.value) == (
            f"unit: head on the TransformerLens hook point {layer!r}: a head's output is "
            f"'{near}.hook_z' (batch, position, head, d_head), or '{near}.hook_result' "
            f"with use_attn_result; name one of those")
    with pytest.raises(UnsupportedModelError) as raised:
        head_site(model, "hook_embed")
    assert str(raised.value) == (
        "unit: head on the TransformerLens hook point 'hook_embed': a head's output is a "
        "block's 'attn.hook_z' (batch, position, head, d_head); name one of those")


def test_a_head_axis_without_a_count_asks_for_num_heads() -> None:
    model = _with(attn=_with(hook_z=HookPoint()))
    with pytest.raises(UnsupportedModelError) as raised:
        head_site(model, "attn.hook_z")
    assert str(raised.value) == ("'attn.hook_z' is a TransformerLens hook point whose model "
                                 "has no cfg.n_heads: say num_heads:")
    site = head_site(model, "attn.hook_z", num_heads=2)
    assert (site.kind, site.num_heads, site.head_dim) == ("hook", 2, None)


@pytest.mark.parametrize(("children", "attention"), [
    *[((fused,), True) for fused in ("qkv", "c_attn", "Wqkv", "in_proj", "qkv_proj",
                                     "query_key_value")],
    (("q", "k"), True), (("query", "key", "value"), True), (("to_q", "to_k"), True),
    (("q",), False), (("key",), False), (("fc1", "fc2"), False), ((), False),
    (("QKV",), False), (("wqkv",), False)])
def test_a_module_computes_attention_by_its_query_and_key_children(
        children: tuple[str, ...], attention: bool) -> None:
    from pytest_unitablate.core.heads import _computes_attention

    module = _with(**{name: nn.Linear(4, 4) for name in children})
    assert _computes_attention(module) is attention
    assert _computes_attention(None) is False


class Part(nn.Module):
    """A container whose class name says nothing: only attribute names can."""

    def __init__(self, **children: nn.Module) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


def _gpt2_like() -> nn.Module:
    def block() -> Part:
        return Part(attn=Part(c_attn=nn.Linear(8, 24), c_proj=nn.Linear(8, 8)),
                    mlp=Part(c_fc=nn.Linear(8, 32), c_proj=nn.Linear(32, 8)))

    return Part(transformer=Part(h=nn.ModuleList([block(), block()])))


def test_an_mlp_projection_is_refused_naming_the_attention_projection_of_its_block(
        ) -> None:
    model = _gpt2_like()
    with pytest.raises(UnsupportedModelError) as raised:
        head_site(model, "transformer.h.1.mlp.c_proj", num_heads=2)
    assert str(raised.value) == (
        "'transformer.h.1.mlp.c_proj' is the output projection of 'transformer.h.1.mlp' "
        "(Part), which is not an attention module: its input features are neurons, not "
        "heads, and num_heads would only cut them into blocks. For heads name the "
        "attention's projection ('transformer.h.1.attn.c_proj'). For its neurons drop "
        "unit: head and name the layer before it (its output is these neurons), with "
        "channel_dim: -1")
    site = head_site(model, "transformer.h.1.attn.c_proj", num_heads=2)
    assert (site.kind, site.num_heads, site.head_dim) == ("projection", 2, 4)
    # an attention known by its name alone (no query or key children, a plain class)
    named = Part(transformer=Part(h=nn.ModuleList([Part(attn=Part(out_proj=nn.Linear(8, 8)))])))
    assert head_site(named, "transformer.h.0.attn.out_proj", num_heads=2).kind == "projection"


class TopAttention(nn.Module):
    """An attention module used as the whole model: its projection is a top-level layer."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 2
        self.out_proj = nn.Linear(8, 8)


class TopBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.out_proj = nn.Linear(8, 8)


def test_a_top_level_projection_belongs_to_the_model_it_is_in() -> None:
    site = head_site(TopAttention(), "out_proj")
    assert (site.kind, site.num_heads, site.head_dim) == ("projection", 2, 4)
    with pytest.raises(UnsupportedModelError, match=r"^'out_proj' is the output projection "
                                                    r"of 'the model' \(TopBlock\), which is "
                                                    r"not an attention module: .* with "
                                                    r"channel_dim: -1$"):
        head_site(TopBlock(), "out_proj", num_heads=2)


def test_a_stated_count_is_a_positive_int_and_a_root_child_can_state_it() -> None:
    zero = _with(0, proj=nn.Linear(8, 8))
    assert find_head_count(zero, "proj") is None  # 0 heads says nothing
    zero.config = SimpleNamespace(num_heads=True, n_head=3)  # a bool is no count
    assert find_head_count(zero, "proj") == (3, "the model")
    assert find_head_count(_with(attn=_with(1)), "attn") == (1, "attn")
    # a top-level layer's sibling holds it (the root has no name to put before it)
    assert find_head_count(_with(meta=_with(4), proj=nn.Linear(8, 8)), "proj") == (4, "meta")


def test_an_attention_module_is_refused_naming_the_projection_that_mixes_its_heads() -> None:
    model = _with(blocks=nn.ModuleList([_with(attn=HFAttention(8, 4))]))
    with pytest.raises(UnsupportedModelError) as raised:
        head_site(model, "blocks.0.attn")
    assert str(raised.value) == (
        "layer 'blocks.0.attn' is an attention module (HFAttention); for unit: head name its "
        "output projection, e.g. 'blocks.0.attn.o_proj' (the heads are its input, before it "
        "mixes them)")
    bert = _with(enc=_with(attention=_with(
        self=_with(12, query=nn.Linear(8, 8), key=nn.Linear(8, 8), value=nn.Linear(8, 8)),
        output=_with(dense=nn.Linear(8, 8)))))
    with pytest.raises(UnsupportedModelError) as raised:
        head_site(bert, "enc.attention.self")
    assert str(raised.value) == (
        "layer 'enc.attention.self' is an attention module (Module) whose heads are mixed "
        "by a projection elsewhere: for unit: head name 'enc.attention.output.dense' (the "
        "heads are its input)")


def test_features_that_do_not_split_into_the_heads_are_refused() -> None:
    from pytest_unitablate.core.heads import head_mask

    with pytest.raises(ConfigError) as raised:
        head_mask(10, 4, [1], torch.zeros(1))
    assert str(raised.value) == "10 features do not split into 4 heads"
    mask = head_mask(4, 2, [0], torch.zeros(1, dtype=torch.float64))
    assert mask.dtype == torch.float64 and mask.tolist() == [0.0, 0.0, 1.0, 1.0]


def test_a_layer_that_is_no_projection_is_refused_saying_what_its_outputs_are() -> None:
    model = _with(attn=HFAttention(8, 4), act=nn.ReLU())
    for layer, kind, what in (("attn.q_proj", "Linear", "channels"),
                              ("act", "ReLU", "outputs")):
        with pytest.raises(UnsupportedModelError) as raised:
            head_site(model, layer)
        assert str(raised.value) == (
            "unit: head needs an nn.MultiheadAttention, the output projection of an "
            "attention module (a linear layer named out_proj, o_proj, c_proj, dense, proj, "
            f"wo: the heads are its input) or a TransformerLens hook_z; {layer!r} is a "
            f"{kind}. Its {what} are not heads: name the attention's projection, or drop "
            "unit: head")


def test_a_projection_whose_count_nobody_states_asks_for_num_heads() -> None:
    from attention_models import QuietAttention

    with pytest.raises(UnsupportedModelError) as raised:
        head_site(_with(attn=QuietAttention()), "attn.o_proj")
    assert str(raised.value) == (
        "'attn.o_proj' is the output projection of an attention module, but neither it, its "
        "attention module, a module beside it nor the model's config says how many heads it "
        "has (num_heads, num_attention_heads, n_head, n_heads): add num_heads: to the check "
        "or the spec")


class Conv1D(nn.Module):
    """Hugging Face's Conv1D: weight (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(
            *x.shape[:-1], self.nf)


def test_a_conv1d_projection_is_as_wide_as_its_input() -> None:
    attn = _with(4, q_proj=nn.Linear(8, 12), k_proj=nn.Linear(8, 12), c_proj=Conv1D(8, 12))
    site = head_site(_with(attn=attn), "attn.c_proj")
    assert (site.kind, site.num_heads, site.head_dim) == ("projection", 4, 3)
    wrong = _with(5, q_proj=nn.Linear(8, 12), k_proj=nn.Linear(8, 12), c_proj=Conv1D(10, 12))
    with pytest.raises(ConfigError, match=r"^'attn.c_proj' takes 12 features, which do not "
                                          r"split into 5 heads$"):
        head_site(_with(attn=wrong), "attn.c_proj")
