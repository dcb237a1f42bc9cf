"""Regressions that a planted bug once survived: each test fails on that bug."""

from __future__ import annotations

import torch
from torch import nn

from pytest_unitablate import ablate, channel_means


class Reuse(nn.Module):
    """The ablated layer is an Identity, so its output *is* a tensor used again later."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv2d(1, 3, 3, padding=1)
        self.ident = nn.Identity()
        self.f = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        return self.f(self.ident(h)) + h  # h + f(h): the skip path must see the original


def test_the_layer_output_is_never_written_in_place() -> None:
    torch.manual_seed(0)
    net = Reuse().eval()
    x = torch.randn(2, 1, 5, 5)
    with torch.no_grad():
        h = net.pre(x)
        cut = h.clone()
        cut[:, 1] = 0.0
        expected = net.f(cut) + h
        with ablate(net, {"ident": [1]}):
            got = net(x)
    assert torch.allclose(got, expected)


def test_hooks_of_the_ablated_module_itself_survive() -> None:
    net = Reuse().eval()
    calls: list[str] = []
    pre = net.ident.register_forward_pre_hook(lambda m, a: calls.append("pre"))
    post = net.ident.register_forward_hook(lambda m, a, o: calls.append("post"))
    x = torch.randn(1, 1, 5, 5)
    with ablate(net, {"ident": [0]}):
        net(x)
    calls.clear()
    net(x)
    assert calls == ["pre", "post"]
    pre.remove()
    post.remove()


def test_channel_means_average_over_examples_and_positions() -> None:
    torch.manual_seed(1)
    net = Reuse().eval()
    batches = [(torch.randn(4, 1, 5, 5), torch.zeros(4, dtype=torch.long)),
               (torch.randn(3, 1, 5, 5), torch.zeros(3, dtype=torch.long))]
    seen: list[torch.Tensor] = []
    handle = net.pre.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
    with torch.no_grad():
        for x, _ in batches:
            net(x)
    handle.remove()
    reference = torch.cat(seen).permute(1, 0, 2, 3).reshape(3, -1).mean(dim=1)
    means = channel_means(net, batches, ["pre"])["pre"].reshape(-1)
    assert means.shape == (3,)
    assert torch.allclose(means, reference, atol=1e-6)


def test_channel_means_accumulate_in_float64() -> None:
    """1e8, a thousand ones and -1e8: a float32 sum loses the ones (it gives 0 or a few
    hundred, by the order it adds in); the float64 one is exact, so the mean is 1000/1002."""
    x = torch.tensor([[1e8]] + [[1.0]] * 1000 + [[-1e8]])
    model = nn.Sequential(nn.Identity())
    means = channel_means(model, [(x, torch.zeros(len(x), dtype=torch.long))], ["0"])
    assert means["0"].dtype == torch.float32
    assert abs(float(means["0"][0]) - 1000 / 1002) < 1e-6


def test_an_ablated_output_keeps_its_dtype_and_its_container() -> None:
    """A bfloat16 layer stays bfloat16 (a float32 mask would promote it and break the next
    layer's matmul); a layer that returns a list gives a list back, a tuple a tuple."""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(torch.bfloat16)
    x = torch.randn(5, 4, dtype=torch.bfloat16)
    for ablation in ("zero", "mean", 0.5):
        means = {"1": torch.full((6,), 0.25)} if ablation == "mean" else None
        with ablate(model, {"1": [0, 2]}, ablation=ablation, means=means):
            assert model(x).dtype == torch.bfloat16

    class Pair(nn.Module):
        def __init__(self, kind: type) -> None:
            super().__init__()
            self.kind = kind

        def forward(self, x: torch.Tensor) -> object:
            return self.kind([x * 2, "extra"])

    for kind in (list, tuple):
        net = nn.Sequential(Pair(kind))
        with ablate(net, {"0": [1]}):
            out = net(torch.ones(2, 3))
        assert type(out) is kind and out[1] == "extra"
        assert out[0].tolist() == [[2.0, 0.0, 2.0], [2.0, 0.0, 2.0]]
