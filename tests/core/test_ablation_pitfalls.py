"""Regression tests for the hook pitfalls known from baukit, Captum, TransformerLens and torch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_unitablate import ablate, channel_means, evaluate
from pytest_unitablate.core.layers import probe_layers
from pytest_unitablate.errors import (
    LayerNeverRanError,
    UnsupportedModelError,
)


class InplaceAfter(nn.Module):
    """conv -> ReLU(inplace) -> residual ``out += identity``: in-place ops after the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv(x))
        out += x
        out.mul_(2)
        return self.head(out.mean(dim=(2, 3)))


def test_inplace_ops_after_the_layer_do_not_corrupt_means_or_results() -> None:
    torch.manual_seed(0)
    net = InplaceAfter().eval()
    x = torch.randn(6, 3, 4, 4)
    means = channel_means(net, (x, torch.zeros(6, dtype=torch.long)), ["conv"])
    saved = {k: v.clone() for k, v in means.items()}
    with torch.no_grad(), ablate(net, {"conv": [1]}, ablation="mean", means=means):
        first = net(x)
        second = net(x)
    assert torch.equal(first, second)  # cached replacement not written into
    assert torch.equal(means["conv"], saved["conv"])


class Never(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(2, 2)
        self.unused = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_layer_that_never_runs_is_an_error() -> None:
    net = Never()
    with pytest.raises(LayerNeverRanError, match="'unused' never ran"), \
            ablate(net, {"unused": [0]}):
        net(torch.randn(1, 2))


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


def test_tuple_output_ablates_first_element_on_chosen_channel_dim() -> None:
    torch.manual_seed(0)
    net = TupleOut().eval()
    x = torch.randn(2, 5, 3)
    seen: list[torch.Tensor] = []
    with ablate(net, {"lstm": [2]}, channel_dim=-1):
        h = net.lstm.register_forward_hook(lambda m, a, o: seen.append(o[0]))
        net(x)
        h.remove()
    assert torch.all(seen[0][..., 2] == 0)
    assert not torch.all(seen[0][..., 1] == 0)


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"y": self.inner(x)}


def test_dict_output_is_refused_clearly() -> None:
    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.d = DictOut()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.d(x)["y"]

    net = Wrap()
    with pytest.raises(UnsupportedModelError, match="returns a dict"), ablate(net, {"d": [0]}):
        net(torch.randn(1, 2))


def test_bn_and_dropout_modes_restored_by_evaluate() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 3))
    net.train()
    net[2].eval()  # a user's mixed setting must come back exactly
    flags = [m.training for m in net.modules()]
    stats = net[1].running_mean.clone()
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    r1 = evaluate(net, (x, y))
    with ablate(net, {"1": [0]}):
        evaluate(net, (x, y))
    r2 = evaluate(net, (x, y))
    assert [m.training for m in net.modules()] == flags
    assert torch.equal(net[1].running_mean, stats)  # no BN update from evaluation
    assert (r1.predictions == r2.predictions).all()  # dropout off: deterministic


def test_weight_zeroing_is_not_activation_zeroing_with_bias_and_bn() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 1, bias=True), nn.BatchNorm2d(3)).eval()
    net[1].running_mean.fill_(0.3)
    x = torch.randn(2, 2, 3, 3)
    with torch.no_grad(), ablate(net, {"1": [0]}):
        ours = net(x)[:, 0]
    saved = net[0].weight.data.clone()
    with torch.no_grad():
        net[0].weight.data[0] = 0
        zeroed_weights = net(x)[:, 0]
        net[0].weight.data.copy_(saved)
    assert torch.all(ours == 0)
    assert not torch.allclose(zeroed_weights, torch.zeros_like(zeroed_weights))


def test_torchscript_refused_and_dataparallel_unwrapped() -> None:
    net = nn.Sequential(nn.Linear(2, 3))
    scripted = torch.jit.script(net)
    with pytest.raises(UnsupportedModelError, match="TorchScript"), ablate(scripted, {"0": [0]}):
        pass
    dp = nn.DataParallel(net)
    with torch.no_grad(), ablate(dp, {"module.0": [1]}):
        out = dp(torch.ones(1, 2))
    assert out[0, 1] == 0
    with torch.no_grad(), ablate(dp, {"0": [1]}):
        assert dp(torch.ones(1, 2))[0, 1] == 0


def test_torch_compile_wrapper_is_refused_with_the_eager_alternative() -> None:
    net = nn.Sequential(nn.Linear(2, 3))
    compiled = torch.compile(net, backend="eager")
    with pytest.raises(UnsupportedModelError, match="_orig_mod"), ablate(compiled, {"0": [2]}):
        pass
    with torch.no_grad(), ablate(compiled._orig_mod, {"0": [2]}):
        assert net(torch.ones(1, 2))[0, 2] == 0


def test_probe_reports_calls_shapes_and_channels() -> None:
    net = InplaceAfter()
    info = probe_layers(net, torch.zeros(1, 3, 4, 4), ["conv", "head"])
    assert info["conv"].channels == 3 and info["conv"].calls == 1
    assert info["head"].shape == (1, 4)
    # a negative channel_dim counts from the end of each layer's own shape
    back = probe_layers(net, torch.zeros(1, 3, 4, 4), ["conv", "head"], channel_dim=-3)
    assert back["conv"].channels == 3 and back["head"].channels == 0  # (1, 4) has no -3
    assert probe_layers(net, torch.zeros(1, 3, 4, 4), ["head"], channel_dim=-1)[
        "head"].channels == 4


@pytest.mark.parametrize(("attention", "proj", "hint"), [
    (lambda: nn.MultiheadAttention(8, 2, batch_first=True), "attn.out_proj",
     "; an nn.MultiheadAttention never calls its out_proj as a module (its weights are "
     "used inside the attention function): for its heads, name the attention layer "
     "'attn' with unit: head"),
    ("swin", "attn.proj",
     "; torchvision's ShiftedWindowAttention applies its proj inside a function, never as "
     "a module: for its heads name the attention 'attn' with unit: head; for its output, "
     "'attn' with channel_dim: -1"),
])
def test_a_projection_used_inside_a_function_says_what_to_name_instead(
        attention: object, proj: str, hint: str) -> None:
    if attention == "swin":
        from torchvision.models import swin_transformer as swin

        def attention() -> nn.Module:
            return swin.ShiftedWindowAttention(8, [2, 2], [0, 0], num_heads=2)
        x = torch.randn(2, 4, 4, 8)
    else:
        x = torch.randn(2, 5, 8)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = attention()  # type: ignore[operator]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.attn(x, x, x)[0] if isinstance(self.attn, nn.MultiheadAttention) \
                else self.attn(x)
            return out.flatten(1)  # type: ignore[no-any-return]

    net = Net().eval()
    with pytest.raises(LayerNeverRanError) as raised, ablate(net, {proj: [0]}):
        net(x)
    assert hint in str(raised.value), str(raised.value)
