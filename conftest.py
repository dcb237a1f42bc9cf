"""Root conftest: session fixtures of the digits demo (unitablate_demo).

Fixtures: ``digits_resnet``, ``digits_alexnet``, ``digits_vit`` (models in eval mode),
``digits_test``,
``digits_ranking`` (unshuffled ``DataLoader`` s of ``(inputs, labels)`` batches).
``--demo-checkpoint NAME`` (repeatable) swaps in another shipped checkpoint for the
fixture of its architecture, e.g.::

    pytest --unitablate-spec specs/resnet.yaml --demo-checkpoint resnet-finetuned

torch is imported only inside the fixtures, so this file costs nothing at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from torch import nn


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unitablate-demo", "digits demo (unitablate_demo)")
    group.addoption(
        "--demo-checkpoint",
        action="append",
        default=[],
        dest="demo_checkpoint",
        metavar="NAME",
        help="use this shipped checkpoint for the digits fixture of its architecture "
        "(resnet-finetuned, resnet-retrained, alexnet-retrained, vit-finetuned, ...); "
        "default: resnet / alexnet / vit",
    )


def _checkpoint_for(config: pytest.Config, arch: str) -> str:
    from unitablate_demo.models import read_manifest

    manifest = read_manifest()
    chosen = [n for n in config.getoption("demo_checkpoint") or [] if _arch(manifest, n) == arch]
    if len(chosen) > 1:
        raise pytest.UsageError(f"--demo-checkpoint: several {arch} checkpoints: {chosen}")
    return chosen[0] if chosen else arch


def _arch(manifest: dict[str, dict[str, Any]], name: str) -> str:
    if name not in manifest:
        known = ", ".join(sorted(manifest))
        raise pytest.UsageError(f"--demo-checkpoint {name}: unknown checkpoint; known: {known}")
    return str(manifest[name]["arch"])


@pytest.fixture(scope="session")
def digits_resnet(pytestconfig: pytest.Config) -> nn.Module:
    """The demo ResNet (checkpoint ``resnet`` unless ``--demo-checkpoint`` says otherwise)."""
    from unitablate_demo.fixtures import checkpoint

    return checkpoint(_checkpoint_for(pytestconfig, "resnet"))


@pytest.fixture(scope="session")
def digits_alexnet(pytestconfig: pytest.Config) -> nn.Module:
    """The demo AlexNet-style CNN (checkpoint ``alexnet`` unless ``--demo-checkpoint``)."""
    from unitablate_demo.fixtures import checkpoint

    return checkpoint(_checkpoint_for(pytestconfig, "alexnet"))


@pytest.fixture(scope="session")
def digits_vit(pytestconfig: pytest.Config) -> nn.Module:
    """The demo vision transformer (checkpoint ``vit`` unless ``--demo-checkpoint``)."""
    from unitablate_demo.fixtures import checkpoint

    return checkpoint(_checkpoint_for(pytestconfig, "vit"))


@pytest.fixture(scope="session")
def digits_test() -> Any:
    """The test split (597 examples) as ``(inputs, labels)`` batches."""
    from unitablate_demo.fixtures import test_data

    return test_data()


@pytest.fixture(scope="session")
def digits_ranking() -> Any:
    """The ranking split (200 examples) as ``(inputs, labels)`` batches."""
    from unitablate_demo.fixtures import ranking_data

    return ranking_data()
