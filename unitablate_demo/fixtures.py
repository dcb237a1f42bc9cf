"""Plain callables that return the demo models and data, for specs that use import paths.

A spec can name them instead of pytest fixtures, e.g. ``model:
"unitablate_demo.fixtures:resnet"`` and ``data: "unitablate_demo.fixtures:test_data"``;
that works in any directory (no ``conftest.py`` needed). The repository's root
``conftest.py`` wraps the same callables as session fixtures ``digits_resnet``,
``digits_alexnet``, ``digits_test`` and ``digits_ranking``.

Data are unshuffled ``DataLoader`` s of ``(inputs, labels)`` batches (256 per batch) of
16x16 images, the input size of both models.

Example::

    >>> model = resnet()
    >>> inputs, labels = next(iter(test_data()))
    >>> tuple(inputs.shape), tuple(labels.shape), type(model).__name__
    ((256, 1, 16, 16), (256,), 'DigitsResNet')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader


def checkpoint(name: str) -> nn.Module:
    """Any shipped checkpoint by name, in eval mode (sha256-checked)."""
    from unitablate_demo.models import load_model

    return load_model(name)


def resnet() -> nn.Module:
    """The reference ResNet-14 (checkpoint ``resnet``)."""
    return checkpoint("resnet")


def resnet_finetuned() -> nn.Module:
    """The fine-tuned regression (checkpoint ``resnet-finetuned``)."""
    return checkpoint("resnet-finetuned")


def resnet_retrained() -> nn.Module:
    """The ResNet retrained from scratch with seed 1 (checkpoint ``resnet-retrained``)."""
    return checkpoint("resnet-retrained")


def resnet_seed2() -> nn.Module:
    """The ResNet retrained from scratch with seed 2 (checkpoint ``resnet-seed2``)."""
    return checkpoint("resnet-seed2")


def alexnet() -> nn.Module:
    """The reference AlexNet-style CNN (checkpoint ``alexnet``)."""
    return checkpoint("alexnet")


def alexnet_retrained() -> nn.Module:
    """The AlexNet-style CNN retrained with seed 1 (checkpoint ``alexnet-retrained``)."""
    return checkpoint("alexnet-retrained")


def alexnet_seed2() -> nn.Module:
    """The AlexNet-style CNN retrained with seed 2 (checkpoint ``alexnet-seed2``)."""
    return checkpoint("alexnet-seed2")


def vit() -> nn.Module:
    """The reference vision transformer (checkpoint ``vit``; needs torchvision)."""
    return checkpoint("vit")


def vit_finetuned() -> nn.Module:
    """The ViT fine-tuned without head 1 and neuron 24 of its first block
    (``vit-finetuned``)."""
    return checkpoint("vit-finetuned")


def test_data() -> DataLoader[tuple[torch.Tensor, ...]]:
    """The test split (597 examples) as batches of ``(inputs, labels)``."""
    from unitablate_demo.data import digits_loader

    return digits_loader("test")


def ranking_data() -> DataLoader[tuple[torch.Tensor, ...]]:
    """The ranking split (200 examples) as batches of ``(inputs, labels)``."""
    from unitablate_demo.data import digits_loader

    return digits_loader("ranking")


# pytest would collect a module-level ``test_data`` function if this module were ever
# collected as a test file; it is not (no ``test_`` file name), but make it explicit.
test_data.__test__ = False  # type: ignore[attr-defined]


def lm(name: str = "lm-seed0") -> nn.Module:
    """The demo language model (``unitablate_demo.lm``): ``lm-seed0`` .. ``lm-seed4``,
    ``lm-prevented``; it returns ``(N, T, V)`` logits (a spec says ``position: last``)."""
    from unitablate_demo.lm import load

    return load(name)


def induction_prompts() -> list[dict[str, torch.Tensor]]:
    """The induction prompts: padded tokenizer-style batches with ``labels``."""
    from unitablate_demo.lm import prompts

    return prompts("induction")


def copy_prompts() -> list[dict[str, torch.Tensor]]:
    """The copy prompts (``[C] x y1 .. yk -> x``)."""
    from unitablate_demo.lm import prompts

    return prompts("copy")


def bigram_prompts() -> list[dict[str, torch.Tensor]]:
    """The bigram prompts (``[B] t f(t) .. -> f(last)``)."""
    from unitablate_demo.lm import prompts

    return prompts("bigram")
