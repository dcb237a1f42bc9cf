"""Property tests of ablate(): exact, out of place, leak-free, over generated small networks.

The empty unit set has its own test; richer networks (shared modules, containers, tuple
outputs, ``channel_dim=-1``, mixed training flags) are in ``test_ablation_generated.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_unitablate import ablate
from pytest_unitablate.errors import LayerCalledTwiceError, UnitAblateError


class Block(nn.Module):
    """conv-bn-relu(inplace) with an optional residual ``out += identity``."""

    def __init__(self, c: int, residual: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.conv(x)))
        if self.residual:
            out += x
        return out


class Net(nn.Module):
    def __init__(self, widths: list[int], residual: list[bool], shared_once: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, widths[0], 3, padding=1)
        self.stem_relu = nn.ReLU(inplace=True)
        layers: list[nn.Module] = []
        for i, (w, r) in enumerate(zip(widths, residual, strict=True)):
            if i and w != widths[i - 1]:
                layers.append(nn.Conv2d(widths[i - 1], w, 1))
            layers.append(Block(w, r))
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(widths[-1], 8)
        self.act = nn.ReLU(inplace=True) if shared_once else nn.Identity()
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.stem_relu(self.stem(x)))
        return self.fc2(self.act(self.fc1(self.flat(self.pool(h)))))


@st.composite
def networks(draw: Any) -> tuple[Net, torch.Tensor]:
    depth = draw(st.integers(1, 3))
    widths = [draw(st.integers(2, 5)) for _ in range(depth)]
    residual = [draw(st.booleans()) for _ in range(depth)]
    torch.manual_seed(draw(st.integers(0, 10_000)))
    net = Net(widths, residual, draw(st.booleans()))
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(draw(st.integers(1, 4)), 1, 5, 5)
    return net, x


def _layers(net: nn.Module) -> list[str]:
    return [n for n, m in net.named_modules() if n and not isinstance(m, (nn.Sequential, Block))
            and n != "pool" and n != "flat"]


def _capture(net: nn.Module, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the layer's output as the rest of the network sees it, the final output)."""
    seen: list[torch.Tensor] = []
    module = dict(net.named_modules())[name]
    handle = module.register_forward_hook(lambda m, a, o: seen.append(o.clone()))
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        handle.remove()
    return seen[0], out


def _state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _no_hooks(net: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(networks(), st.data(), st.sampled_from(["zero", "mean", 0.75]))
def test_only_chosen_channels_change_and_equal_the_replacement(
    net_x: tuple[Net, torch.Tensor], data: Any, ablation: Any
) -> None:
    net, x = net_x
    net.eval()
    name = data.draw(st.sampled_from(_layers(net)))
    before, _ = _capture(net, name, x)
    channels = before.shape[1]
    units = data.draw(st.lists(st.integers(0, channels - 1), unique=True, min_size=1,
                               max_size=channels))
    means = {name: torch.randn(channels)} if ablation == "mean" else None
    state = _state(net)
    with ablate(net, {name: units}, ablation=ablation, means=means):
        after, _ = _capture(net, name, x)
    keep = [c for c in range(channels) if c not in units]
    assert torch.equal(after[:, keep], before[:, keep])
    for u in units:
        expected = {"zero": 0.0, "mean": None, 0.75: 0.75}[ablation]
        value = means[name][u].item() if means else expected
        assert torch.all(after[:, u] == value)
    assert _no_hooks(net)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


@settings(deadline=None, max_examples=30)
@given(networks(), st.data())
def test_empty_unit_set_is_bit_identical_and_state_is_untouched(
    net_x: tuple[Net, torch.Tensor], data: Any
) -> None:
    net, x = net_x
    training = [m.training for m in net.modules()]
    net_eval_out = None
    name = data.draw(st.sampled_from(_layers(net)))
    state = _state(net)
    with torch.no_grad():
        net.eval()
        net_eval_out = net(x)
        with ablate(net, {name: []}):
            hooked = net(x)
        after = net(x)
    assert torch.equal(hooked, net_eval_out)
    assert torch.equal(after, net_eval_out)
    assert _no_hooks(net)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    for m, t in zip(net.modules(), training, strict=True):
        m.train(t)  # (we changed it ourselves with .eval() above)


@settings(deadline=None, max_examples=30)
@given(networks(), st.data())
def test_joint_ablation_of_two_layers_equals_sequential_definition(
    net_x: tuple[Net, torch.Tensor], data: Any
) -> None:
    """Ablating layers A and B together = a manual network with both outputs masked."""
    net, x = net_x
    net.eval()
    names = data.draw(st.lists(st.sampled_from(_layers(net)), min_size=2, max_size=2, unique=True))
    plan = {}
    for n in names:
        c = _capture(net, n, x)[0].shape[1]
        plan[n] = data.draw(st.lists(st.integers(0, c - 1), unique=True, min_size=1, max_size=c))

    def manual(m: nn.Module, a: Any, o: torch.Tensor, units: list[int]) -> torch.Tensor:
        o = o.clone()
        o[:, units] = 0
        return o

    modules = dict(net.named_modules())
    handles = [modules[n].register_forward_hook(
        lambda m, a, o, u=plan[n]: manual(m, a, o, u)) for n in names]
    try:
        with torch.no_grad():
            reference = net(x)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad(), ablate(net, plan):
        ours = net(x)
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)  # exact: same ops


class Boom(Exception):
    pass


def test_hooks_removed_and_user_hooks_kept_after_exception_in_forward() -> None:
    net = Net([3], [True], False).eval()
    user_calls: list[int] = []
    user = net.fc1.register_forward_hook(lambda m, a, o: user_calls.append(1))

    def explode(m: nn.Module, a: Any, o: Any) -> None:
        raise Boom

    bomb = net.fc2.register_forward_hook(explode)
    with pytest.raises(Boom), ablate(net, {"body.0.conv": [1]}):
        net(torch.randn(2, 1, 5, 5))
    bomb.remove()
    assert len(net.fc1._forward_hooks) == 1
    assert all(not m._forward_hooks for n, m in net.named_modules() if n != "fc1")
    assert all(not m._forward_pre_hooks for m in net.modules())
    net(torch.randn(1, 1, 5, 5))
    assert len(user_calls) == 2
    user.remove()


def test_exception_inside_with_block_removes_hooks() -> None:
    net = Net([3], [False], False)
    with pytest.raises(Boom), ablate(net, {"stem": [0]}):
        raise Boom
    assert _no_hooks(net)


def test_shared_module_run_twice_is_refused_with_a_suggestion() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 2, 1)
            self.bn1 = nn.BatchNorm2d(2)
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu(self.bn1(self.relu(self.conv1(x))))

    net = Shared().eval()
    with pytest.raises(LayerCalledTwiceError, match=r"'relu' ran 2 times.*'bn1'"), \
            ablate(net, {"relu": [0]}):
        net(torch.randn(1, 1, 2, 2))
    assert _no_hooks(net)


def test_errors_are_package_errors_with_where_and_what() -> None:
    net = Net([3], [False], False)
    with pytest.raises(UnitAblateError, match=r"no layer 'stm'.*'stem'"), ablate(net, {"stm": [0]}):
        pass
    with pytest.raises(UnitAblateError, match=r"unit 3 .* 'stem', which has 3 channels"), \
            ablate(net, {"stem": [3]}):
        net(torch.randn(1, 1, 5, 5))
    with pytest.raises(UnitAblateError, match="ablation must be"), ablate(net, {"stem": [0]},
                                                                         ablation="half"):
        pass
    assert _no_hooks(net)
