"""The demo models (two CNNs and a vision transformer) and their checkpoint loader.

* :func:`resnet_digits` -- a CIFAR-style ResNet-14 (He et al. 2016, section 4.2: three
  stages of two ``BasicBlock`` s, narrow widths 8/16/16) with torchvision's module names:
  ``conv1``, ``bn1``, ``relu``, ``layer1``..``layer3`` (blocks ``layerS.B`` with ``conv1``,
  ``bn1``, ``relu`` -- one module used twice per forward, as in torchvision --, ``conv2``,
  ``bn2``, ``downsample``), ``avgpool`` and ``fc``. A unit of a block output (``layer3.1``)
  is a channel after the residual add and the ReLU.
* :func:`alexnet_digits` -- an AlexNet-style stack ``conv1``..``conv5`` (each a plain
  ``Conv2d``, so ``conv5`` is the conv output before ``relu5``), with ``relu1``..``relu5``,
  ``pool1``/``pool2``, then ``avgpool`` (global) and ``fc``. ``conv5`` has 256
  units, so "unit 245 in conv5" is a real unit.

* :func:`vit_digits` -- a small torchvision ``VisionTransformer`` (3 blocks, 4 heads of
  16, an MLP of 64 neurons) whose attention heads and MLP neurons are the units of
  ``specs/vit.yaml``; it needs torchvision, which only this model imports.

All take ``(N, 1, 16, 16)`` inputs (:data:`unitablate_demo.data.INPUT_SIZE`) and return
10 logits. :func:`load_model` loads a shipped checkpoint in eval mode after checking its
sha256 against ``checkpoints/manifest.json``.

Example::

    >>> m = resnet_digits()
    >>> [n for n, _ in m.named_children()]
    ['conv1', 'bn1', 'relu', 'layer1', 'layer2', 'layer3', 'avgpool', 'fc']
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
MANIFEST_PATH = CHECKPOINT_DIR / "manifest.json"
NUM_CLASSES = 10


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` layout: two 3x3 convs, identity or 1x1 shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)  # type: ignore[no-any-return]


class DigitsResNet(nn.Module):
    """CIFAR-style ResNet (6n+2 layers; n=2 gives ResNet-14) for 1-channel digits."""

    def __init__(
        self,
        widths: tuple[int, int, int] = (8, 16, 16),
        blocks: int = 2,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(1, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[0], blocks, stride=1)
        self.layer2 = self._make_layer(widths[1], blocks, stride=2)
        self.layer3 = self._make_layer(widths[2], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers: list[nn.Module] = [BasicBlock(self.inplanes, planes, stride)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)  # type: ignore[no-any-return]


class DigitsAlexNet(nn.Module):
    """AlexNet-style CNN: five named convs, separate ReLU/pool modules, GAP + linear head."""


    def __init__(
        self,
        widths: tuple[int, int, int, int, int] = (32, 64, 96, 96, 256),
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.relu3 = nn.ReLU(inplace=True)
        self.conv4 = nn.Conv2d(c3, c4, 3, padding=1)
        self.relu4 = nn.ReLU(inplace=True)
        self.conv5 = nn.Conv2d(c4, c5, 3, padding=1)
        self.relu5 = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.conv3(x))
        x = self.relu4(self.conv4(x))
        x = self.relu5(self.conv5(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)  # type: ignore[no-any-return]


def resnet_digits() -> DigitsResNet:
    """A fresh (untrained) demo ResNet-14."""
    return DigitsResNet()


def alexnet_digits() -> DigitsAlexNet:
    """A fresh (untrained) demo AlexNet-style CNN."""
    return DigitsAlexNet()


def vit_digits() -> nn.Module:
    """A fresh (untrained) demo vision transformer: torchvision's ``VisionTransformer`` for
    16x16 inputs in 4x4 patches (16 tokens and a class token), 3 encoder blocks of 4 heads
    of 16 and an MLP of 32 neurons; its patch embedding takes the one gray channel.

    Its layers by name: ``encoder.layers.encoder_layer_{i}.self_attention`` (heads: ``unit:
    head``), ``encoder.layers.encoder_layer_{i}.mlp.1`` (the MLP's neurons after GELU, ``N,T,C``:
    ``channel_dim: -1``), ``conv_proj`` (the patch embedding, ``N,C,H,W``), ``heads.head``.
    """
    from torchvision.models import VisionTransformer  # the ViT demo needs torchvision

    vit = VisionTransformer(image_size=16, patch_size=4, num_layers=3, num_heads=4,
                            hidden_dim=64, mlp_dim=32, num_classes=NUM_CLASSES, dropout=0.0,
                            attention_dropout=0.0)
    vit.conv_proj = nn.Conv2d(1, 64, kernel_size=4, stride=4)
    return vit  # type: ignore[no-any-return]


ARCHITECTURES = {"resnet": resnet_digits, "alexnet": alexnet_digits, "vit": vit_digits}


def read_manifest(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The checkpoint manifest: name -> {file, sha256, arch, test_accuracy, seed, ...}
    (``path``: another manifest of the same form, such as the LM demo's)."""
    path = MANIFEST_PATH if path is None else path
    if not path.exists():
        return {}
    manifest: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return manifest


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights_arch(path: Path) -> str:
    """The demo architecture whose parameter names and shapes a weights file matches.

    Raises ``OSError`` for a file that cannot be read and ``ValueError`` for weights of no
    demo architecture.
    """
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} is not a weights file torch can load safely "
                         f"({type(exc).__name__}); save model.state_dict()") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ValueError(f"{path} holds a {type(state).__name__} that is not a state dict "
                         f"of tensors; save model.state_dict()")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for arch, build in ARCHITECTURES.items():
        if {k: tuple(v.shape) for k, v in build().state_dict().items()} == shapes:
            return arch
    raise ValueError(f"{path} holds weights of none of the demo architectures "
                     f"({', '.join(ARCHITECTURES)})")


def load_weights(path: Path) -> nn.Module:
    """The demo model of ``path``'s architecture with its weights, in eval mode, on CPU.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     torch.save(load_model("resnet").state_dict(), f"{d}/candidate.pt")
    ...     type(load_weights(Path(f"{d}/candidate.pt"))).__name__
    'DigitsResNet'
    """
    model = ARCHITECTURES[weights_arch(path)]()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()
    return model


def load_model(name: str) -> nn.Module:
    """Load checkpoint ``name`` (e.g. ``resnet``, ``resnet-finetuned``) in eval mode, on CPU.

    Raises ``KeyError`` for a name the manifest does not list and ``ValueError`` when the
    file's sha256 does not match the manifest.
    """
    manifest = read_manifest()
    if name not in manifest:
        known = ", ".join(sorted(manifest)) or "none"
        raise KeyError(f"no demo checkpoint {name!r} in {MANIFEST_PATH}; known: {known}")
    entry = manifest[name]
    path = CHECKPOINT_DIR / str(entry["file"])
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ValueError(
            f"{path}: sha256 {digest} does not match the manifest ({entry['sha256']}); "
            f"retrain with: {entry.get('command', 'python -m unitablate_demo.train')}"
        )
    model = ARCHITECTURES[str(entry["arch"])]()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model
