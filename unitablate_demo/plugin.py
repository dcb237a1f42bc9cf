"""The digits demo's pytest fixtures, as a plugin module (the repository's root
``conftest.py`` loads it; so does a ``conftest.py`` written by ``python -m unitablate_demo
init``).

Fixtures: ``digits_resnet``, ``digits_alexnet``, ``digits_vit`` (models in eval mode),
``digits_test``, ``digits_ranking`` (unshuffled ``DataLoader`` s of ``(inputs, labels)``
batches). Which weights a model fixture loads:

* ``--demo-checkpoint NAME`` (repeatable): a shipped checkpoint (``resnet-finetuned``,
  ``vit-retrained``, ...) for the fixture of its architecture;
* ``--demo-checkpoint PATH.pt``: a weights file (a state dict, as CI hands over a candidate
  checkpoint as an artifact); its architecture is the one whose parameter names and shapes
  it matches;
* the ``DEMO_CHECKPOINT`` environment variable: the same, comma-separated, used when the
  option is not given;
* otherwise the reference checkpoint of each architecture (``resnet``, ``alexnet``, ``vit``).

torch is imported only inside the fixtures, so loading this plugin costs nothing.

Example::

    pytest --unitablate-spec specs/resnet.yaml --demo-checkpoint resnet-finetuned
    DEMO_CHECKPOINT=artifacts/candidate.pt pytest --unitablate-spec specs/resnet.yaml
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from torch import nn

#: The environment variable read when ``--demo-checkpoint`` is not given.
ENV = "DEMO_CHECKPOINT"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unitablate-demo", "digits demo (unitablate_demo)")
    group.addoption(
        "--demo-checkpoint",
        action="append",
        default=[],
        dest="demo_checkpoint",
        metavar="NAME_OR_PATH",
        help="use this shipped checkpoint (resnet-finetuned, resnet-retrained, "
        "alexnet-retrained, vit-finetuned, ...) or weights file (PATH.pt) for the digits "
        f"fixture of its architecture; default: ${ENV}, else resnet / alexnet / vit",
    )


def _chosen(config: pytest.Config) -> list[str]:
    given = list(config.getoption("demo_checkpoint") or [])
    if not given and os.environ.get(ENV):
        given = [v.strip() for v in os.environ[ENV].split(",") if v.strip()]
    return given


def _is_path(value: str) -> bool:
    return value.endswith((".pt", ".pth")) or os.sep in value


def _checkpoint_for(config: pytest.Config, arch: str) -> str:
    chosen = [n for n in _chosen(config) if _arch(n) == arch]
    if len(chosen) > 1:
        raise pytest.UsageError(f"--demo-checkpoint: several {arch} checkpoints: {chosen}")
    return chosen[0] if chosen else arch


def _arch(name: str) -> str:
    if _is_path(name):
        from unitablate_demo.lm import is_lm_weights
        from unitablate_demo.models import weights_arch

        try:
            return "lm" if is_lm_weights(Path(name)) else weights_arch(Path(name))
        except (OSError, ValueError) as exc:
            raise pytest.UsageError(f"--demo-checkpoint {name}: {exc}") from None
    from unitablate_demo.lm import read_manifest as lm_manifest
    from unitablate_demo.models import read_manifest

    manifest = read_manifest()
    if name in lm_manifest():
        return "lm"
    if name not in manifest:
        known = ", ".join(sorted([*manifest, *lm_manifest()]))
        raise pytest.UsageError(f"--demo-checkpoint {name}: unknown checkpoint; known: {known}")
    return str(manifest[name]["arch"])


def pytest_configure(config: pytest.Config) -> None:
    """``DEMO_CHECKPOINT`` chooses the weights under test: failures' re-record command, the
    JSON report and the review page name its value (as ``MODEL_WEIGHTS`` for the docs'
    own fixtures)."""
    with contextlib.suppress(ValueError):  # ValueError: -p no:unitablate, no such ini key
        config.addinivalue_line("unitablate_weights_env", ENV)


def _model(config: pytest.Config, arch: str) -> nn.Module:
    model = _load(config, arch)
    name = _checkpoint_for(config, arch)
    # the checkpoint the report, the review page and a failure name
    setattr(model, "unitablate_checkpoint",  # noqa: B010 (a str on a Module: mypy refuses)
            name if _is_path(name) else f"unitablate_demo:{name}")
    return model


def _load(config: pytest.Config, arch: str) -> nn.Module:
    name = _checkpoint_for(config, arch)
    if arch == "lm":
        from unitablate_demo import lm

        return lm.load_weights(Path(name)) if _is_path(name) else lm.load(
            "lm-seed0" if name == "lm" else name)
    if _is_path(name):
        from unitablate_demo.models import load_weights

        return load_weights(Path(name))
    from unitablate_demo.fixtures import checkpoint

    return checkpoint(name)


@pytest.fixture(scope="session")
def digits_resnet(pytestconfig: pytest.Config) -> nn.Module:
    """The demo ResNet (checkpoint ``resnet`` unless ``--demo-checkpoint`` says otherwise)."""
    return _model(pytestconfig, "resnet")


@pytest.fixture(scope="session")
def digits_alexnet(pytestconfig: pytest.Config) -> nn.Module:
    """The demo AlexNet-style CNN (checkpoint ``alexnet`` unless ``--demo-checkpoint``)."""
    return _model(pytestconfig, "alexnet")


@pytest.fixture(scope="session")
def digits_vit(pytestconfig: pytest.Config) -> nn.Module:
    """The demo vision transformer (checkpoint ``vit`` unless ``--demo-checkpoint``)."""
    return _model(pytestconfig, "vit")


@pytest.fixture(scope="session")
def lm_model(pytestconfig: pytest.Config) -> nn.Module:
    """The demo language model (checkpoint ``lm-seed0`` unless ``--demo-checkpoint lm-...``
    says otherwise): ``(N, T, V)`` logits, for specs with ``position: last``."""
    return _model(pytestconfig, "lm")


@pytest.fixture(scope="session")
def lm_induction() -> Any:
    """The LM demo's induction prompts (tokenizer-style padded batches with labels)."""
    from unitablate_demo.fixtures import induction_prompts

    return induction_prompts()


@pytest.fixture(scope="session")
def lm_copy() -> Any:
    """The LM demo's copy prompts."""
    from unitablate_demo.fixtures import copy_prompts

    return copy_prompts()


@pytest.fixture(scope="session")
def lm_bigram() -> Any:
    """The LM demo's bigram prompts."""
    from unitablate_demo.fixtures import bigram_prompts

    return bigram_prompts()


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


__all__ = ["ENV", "digits_alexnet", "digits_ranking", "digits_resnet", "digits_test",
           "digits_vit", "lm_bigram", "lm_copy", "lm_induction", "lm_model",
           "pytest_addoption", "pytest_configure"]
