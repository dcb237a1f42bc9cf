"""ablate() on real torchvision architectures against an independent plain-hook reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pytest_unitablate import ablate
from pytest_unitablate.errors import LayerCalledTwiceError

torchvision = pytest.importorskip("torchvision")  # a test extra; CI installs it

pytestmark = pytest.mark.slow

CASES = {
    "resnet18": ["layer1.0.conv1", "layer3.1.bn2", "layer4", "fc"],
    "alexnet": ["features.0", "features.10", "classifier.4"],
    "mobilenet_v3_small": ["features.1.block.0", "features.8", "classifier.0"],
}


def _reference(model: nn.Module, layer: str, units: list[int], x: torch.Tensor) -> torch.Tensor:
    def hook(m: nn.Module, a: object, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, units] = 0.0
        return out

    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


@pytest.mark.parametrize("arch", sorted(CASES))
def test_matches_plain_hook_reference(arch: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64) if arch != "alexnet" else torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        clean = model(x)
    for layer in CASES[arch]:
        units = [0, 3, 5]
        expected = _reference(model, layer, units, x)
        with torch.no_grad(), ablate(model, {layer: units}):
            ours = model(x)
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)  # exact: same ops
        assert not torch.equal(ours, clean)
    with torch.no_grad():
        assert torch.equal(model(x), clean)  # nothing left behind


def test_resnet_basicblock_relu_runs_twice_and_is_refused() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    match = r"'layer1.0.relu' ran 2 times.*layer1.0.bn2"
    with pytest.raises(LayerCalledTwiceError, match=match), torch.no_grad(), \
            ablate(model, {"layer1.0.relu": [0]}):
        model(torch.randn(1, 3, 32, 32))
