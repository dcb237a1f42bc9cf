"""ablate() and evaluate() against an independent reference, over generated networks.

The generator covers what the simpler property tests in ``test_ablation_properties.py`` do
not: a layer whose output object is also used elsewhere (``x + proj(gate(x))`` with an
identity gate, where an in-place write would corrupt ``x``), a module run twice in one
forward (refused), containers (a block, the whole body), a layer returning a tuple, a layer
whose channels are the last dimension (``channel_dim=-1``), and modules whose training
flags differ from each other. Every example ablates at least one unit.

The reference ablates with its own forward hook (clone, then index the channel dimension),
never with our masks, and the comparison is the *final* output of the network plus every
other layer's output, not the hook's own return value.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_unitablate import ablate, evaluate
from pytest_unitablate.errors import LayerCalledTwiceError

KINDS = ("plain", "residual_inplace", "reuse", "tuple", "channels_last", "shared")


class Pair(nn.Module):
    """Returns ``(features, per-channel average)``: ablation acts on element 0 only."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return y, y.mean((2, 3), keepdim=True)


class Block(nn.Module):
    def __init__(self, c: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind in ("plain", "residual_inplace", "shared"):
            self.conv = nn.Conv2d(c, c, 3, padding=1)
            self.bn = nn.BatchNorm2d(c)
            self.relu = nn.ReLU(inplace=kind != "shared")
        elif kind == "reuse":
            self.gate = nn.Identity()  # returns its input object itself
            self.proj = nn.Conv2d(c, c, 1)
        elif kind == "tuple":
            self.pair = Pair(c)
        else:  # channels_last
            self.lin = nn.Linear(c, c)
            self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "plain":
            return self.relu(self.bn(self.conv(x)))
        if self.kind == "residual_inplace":
            out = self.relu(self.bn(self.conv(x)))
            out += x
            return out
        if self.kind == "shared":  # one ReLU module, run twice
            return self.relu(self.bn(self.relu(self.conv(x))))
        if self.kind == "reuse":
            return x + self.proj(self.gate(x))
        if self.kind == "tuple":
            y, aux = self.pair(x)
            return y + aux
        y = self.relu(self.lin(x.permute(0, 2, 3, 1)))  # (N, H, W, C)
        return y.permute(0, 3, 1, 2)


class Net(nn.Module):
    def __init__(self, c: int, kinds: list[str]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.body = nn.Sequential(*(Block(c, k) for k in kinds))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


@st.composite
def networks(draw: Any) -> tuple[Net, torch.Tensor]:
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3))
    torch.manual_seed(draw(st.integers(0, 10_000)))
    net = Net(draw(st.integers(2, 5)), kinds)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(draw(st.integers(1, 4)), 1, 6, 6)
    return net, x


def _ablatable(net: Net) -> list[str]:
    """Every module whose output is a tensor or tuple with channels (containers too)."""
    skip = (nn.AdaptiveAvgPool2d, nn.Flatten)
    return [n for n, m in net.named_modules() if n and not isinstance(m, skip)
            and n != "head"]


def _special(net: Net) -> list[str]:
    """The layers the generator exists for: drawn half the time."""
    names = ("gate", "pair", "lin", "relu")
    return [n for n, m in net.named_modules()
            if isinstance(m, Block) or (n.rsplit(".", 1)[-1] in names and n.startswith("body"))]


def _channel_dim(net: Net, name: str) -> int:
    module = dict(net.named_modules())[name]
    parent = dict(net.named_modules()).get(name.rsplit(".", 1)[0])
    last = isinstance(parent, Block) and parent.kind == "channels_last" and module is not parent
    return -1 if last else 1


def _first(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _reference_hook(units: list[int], value: Any, dim: int) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        t = _first(output).clone().movedim(dim, 0)
        for u in units:
            t[u] = value[u] if isinstance(value, torch.Tensor) else value
        t = t.movedim(0, dim)
        return t if isinstance(output, torch.Tensor) else (t, *output[1:])
    return hook


def _calls_and_outputs(net: Net, x: torch.Tensor,
                       extra: Any = None) -> tuple[dict[str, int], dict[str, torch.Tensor], Any]:
    """Calls per module and every module's (first) output, in one forward."""
    calls: dict[str, int] = {}
    outs: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in net.named_modules():
        if not name:
            continue

        def record(m: nn.Module, a: Any, o: Any, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1
            outs[name] = _first(o).clone()
        handles.append(module.register_forward_hook(record))
    try:
        if extra is not None:
            handles.append(extra())
        with torch.no_grad():
            final = net(x)
    finally:
        for h in handles:
            h.remove()
    return calls, outs, final


def _no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(networks(), st.data(), st.sampled_from(["zero", "mean", -0.5]))
def test_ablation_equals_an_independent_reference_everywhere(
    net_x: tuple[Net, torch.Tensor], data: Any, ablation: Any
) -> None:
    net, x = net_x
    net.eval()
    special = _special(net)
    choices = st.sampled_from(_ablatable(net))
    name = data.draw(st.one_of(st.sampled_from(special), choices) if special else choices)
    dim = _channel_dim(net, name)
    calls, before, _ = _calls_and_outputs(net, x)
    channels = before[name].shape[dim]
    units = data.draw(st.lists(st.integers(0, channels - 1), unique=True, min_size=1,
                               max_size=channels))
    means = {name: torch.randn(channels)} if ablation == "mean" else None
    state = {k: v.clone() for k, v in net.state_dict().items()}
    module = dict(net.named_modules())[name]

    if calls[name] > 1:  # a shared module: ablating it would be ambiguous
        with pytest.raises(LayerCalledTwiceError), \
                ablate(net, {name: units}, ablation=ablation, means=means, channel_dim=dim), \
                torch.no_grad():
            net(x)
        assert _no_hooks(net)
        return

    value = means[name] if means else (0.0 if ablation == "zero" else ablation)
    _, expected, expected_final = _calls_and_outputs(
        net, x, extra=lambda: module.register_forward_hook(_reference_hook(units, value, dim)))
    with ablate(net, {name: units}, ablation=ablation, means=means, channel_dim=dim):
        _, got, got_final = _calls_and_outputs(net, x)
    assert torch.equal(got_final, expected_final)
    for layer, tensor in expected.items():
        if layer != name:  # (the reference's own hook runs after the recording hook)
            assert torch.equal(got[layer], tensor), layer
    assert _no_hooks(net)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


@settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
@given(networks(), st.data())
def test_evaluate_runs_in_eval_mode_and_restores_mixed_training_flags(
    net_x: tuple[Net, torch.Tensor], data: Any
) -> None:
    """Flags drawn per module (not overridden by the test) come back exactly."""
    net, x = net_x
    for m in net.modules():
        m.training = data.draw(st.booleans())
    flags = [m.training for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    labels = torch.arange(len(x)) % 4
    candidates = [n for n in _ablatable(net) if _channel_dim(net, n) == 1
                  and "relu" not in n.rsplit(".", 1)[-1]]
    name = data.draw(st.sampled_from(candidates))
    with ablate(net, {name: [0]}, channel_dim=1):  # (a block that permutes in its forward
        result = evaluate(net, [(x, labels)])      # and back shows the modules nothing)
    assert [m.training for m in net.modules()] == flags
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())

    net.eval()  # the reference: every module in eval mode, our own hook
    module = dict(net.named_modules())[name]
    handle = module.register_forward_hook(_reference_hook([0], 0.0, 1))
    try:
        with torch.no_grad():
            reference = net(x).argmax(1)
    finally:
        handle.remove()
    assert result.predictions.tolist() == reference.tolist()
