"""Demo models: torchvision-style names, checkpoints, manifest, accuracy recomputed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from unitablate_demo import models
from unitablate_demo.data import load_split

MANIFEST = models.read_manifest()


def test_resnet_uses_torchvision_module_names() -> None:
    m = models.resnet_digits()
    names = dict(m.named_modules())
    for name in ("conv1", "bn1", "relu", "layer1.0.conv1", "layer2.0.downsample.0",
                 "layer3.1.bn2", "layer3.1.relu", "avgpool", "fc"):
        assert name in names, name
    assert isinstance(names["layer3.1"], models.BasicBlock)
    assert names["layer3.1"].downsample is None
    assert isinstance(names["avgpool"], torch.nn.AdaptiveAvgPool2d)


def test_block_relu_runs_twice_per_forward_like_torchvision() -> None:
    m = models.resnet_digits().eval()
    calls: list[int] = []
    relu = dict(m.named_modules())["layer3.1.relu"]
    h = relu.register_forward_hook(lambda *_: calls.append(1))
    try:
        m(torch.zeros(1, 1, 16, 16))
    finally:
        h.remove()
    assert len(calls) == 2


def test_alexnet_has_five_named_convs_and_a_real_unit_245() -> None:
    m = models.alexnet_digits()
    names = dict(m.named_modules())
    for i in range(1, 6):
        assert isinstance(names[f"conv{i}"], torch.nn.Conv2d)
        assert isinstance(names[f"relu{i}"], torch.nn.ReLU)
    conv5 = names["conv5"]
    assert isinstance(conv5, torch.nn.Conv2d) and conv5.out_channels >= 256
    assert isinstance(names["fc"], torch.nn.Linear)


def test_manifest_lists_the_shipped_checkpoints() -> None:
    for name in ("resnet", "alexnet", "resnet-finetuned", "resnet-retrained"):
        entry = MANIFEST[name]
        for key in ("sha256", "test_accuracy", "seed", "torch_version", "command"):
            assert key in entry, (name, key)
        assert (models.CHECKPOINT_DIR / entry["file"]).stat().st_size < 2 * 1024 * 1024
    assert MANIFEST["resnet-finetuned"]["finetuned_from"] == "resnet"
    assert MANIFEST["resnet-retrained"]["seed"] != MANIFEST["resnet"]["seed"]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_checkpoint_reaches_its_manifest_accuracy(name: str) -> None:
    model = models.load_model(name)
    assert not model.training
    x, y = load_split("test")
    with torch.inference_mode():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(MANIFEST[name]["test_accuracy"], abs=1 / 597 + 1e-9)
    assert acc > 0.9


#: The largest difference of a logit between two machines we measured is a relative 1e-5
#: (an Intel and an AMD EPYC CPU; docs/reproducibility.md): about 1e-4 on these logits.
CROSS_CPU_LOGIT_NOISE = 1e-5 * 10


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_no_baseline_prediction_is_within_float_noise_of_a_tie(name: str) -> None:
    """Why predictions on the demo data cannot differ across CPUs or thread counts: every
    test example's top logit beats the runner-up by over ten times that noise."""
    model = models.load_model(name)
    x, _ = load_split("test")
    with torch.inference_mode():
        logits = model(x)
    assert float(logits.abs().max()) < 10
    top2 = logits.topk(2, dim=1).values
    assert float((top2[:, 0] - top2[:, 1]).min()) > 10 * CROSS_CPU_LOGIT_NOISE


def test_finetuned_shares_unit_identity_with_reference() -> None:
    # fine-tuned from the reference: weights move a little, they are not re-drawn
    ref, ft, re = (models.load_model(n) for n in ("resnet", "resnet-finetuned", "resnet-retrained"))
    w = ref.state_dict()["layer3.0.conv2.weight"]
    d_ft = (ft.state_dict()["layer3.0.conv2.weight"] - w).norm() / w.norm()
    d_re = (re.state_dict()["layer3.0.conv2.weight"] - w).norm() / w.norm()
    assert d_ft < 0.5 * d_re


def test_sha_mismatch_and_unknown_name_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(models.CHECKPOINT_DIR / "resnet.pt", tmp_path / "resnet.pt")
    manifest = {"resnet": dict(MANIFEST["resnet"], sha256="0" * 64)}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(models, "CHECKPOINT_DIR", tmp_path)
    monkeypatch.setattr(models, "MANIFEST_PATH", tmp_path / "manifest.json")
    with pytest.raises(ValueError, match="does not match the manifest"):
        models.load_model("resnet")
    with pytest.raises(KeyError, match="no demo checkpoint 'alexnet'"):
        models.load_model("alexnet")
