"""Root conftest fixtures, --demo-checkpoint, and the import-path callables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from unitablate_demo import fixtures
from unitablate_demo.models import CHECKPOINT_DIR, read_manifest, sha256_file

ROOT = Path(__file__).resolve().parents[2]


def test_fixtures_give_models_and_batches(
    digits_resnet: nn.Module, digits_alexnet: nn.Module, digits_test: Any,
    digits_ranking: Any,
) -> None:
    batches = list(digits_test)
    assert sum(len(y) for _, y in batches) == 597
    assert sum(len(y) for _, y in digits_ranking) == 200
    x, _ = batches[0]
    for model in (digits_resnet, digits_alexnet):
        assert not model.training
        with torch.inference_mode():
            assert model(x).shape == (len(x), 10)


def test_import_path_callables() -> None:
    assert isinstance(fixtures.resnet(), nn.Module)
    assert isinstance(fixtures.alexnet_retrained(), nn.Module)
    assert sum(len(y) for _, y in fixtures.ranking_data()) == 200


def test_conftest_import_does_not_import_torch() -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import conftest; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [([], None, "resnet"), (["--demo-checkpoint", "resnet-finetuned"], None, "resnet-finetuned"),
     (["--demo-checkpoint", "alexnet-retrained"], None, "resnet"),
     ([], "resnet-retrained", "resnet-retrained"),
     (["--demo-checkpoint", "resnet"], "resnet-retrained", "resnet"),  # the option wins
     # a weights file, as CI hands over a candidate: its architecture found by its shapes
     (["--demo-checkpoint", "{candidate}"], None, "resnet-finetuned"),
     ([], "alexnet,{candidate}", "resnet-finetuned")],
)
def test_demo_checkpoint_option_swaps_the_model(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str],
    env: str | None, expected: str
) -> None:
    import shutil

    candidate = pytester.path / "artifacts" / "candidate.pt"
    candidate.parent.mkdir()
    shutil.copy(CHECKPOINT_DIR / read_manifest()["resnet-finetuned"]["file"], candidate)
    args = [a.replace("{candidate}", str(candidate)) for a in args]
    if env is None:
        monkeypatch.delenv("DEMO_CHECKPOINT", raising=False)
    else:
        monkeypatch.setenv("DEMO_CHECKPOINT", env.replace("{candidate}", str(candidate)))
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    sha = read_manifest()[expected]["sha256"]
    pytester.makepyfile(
        f"""
        import hashlib, io, torch
        from unitablate_demo.models import CHECKPOINT_DIR, read_manifest

        def test_it(digits_resnet):
            for name, entry in read_manifest().items():
                state = torch.load(CHECKPOINT_DIR / entry["file"], weights_only=True)
                if all(torch.equal(v, digits_resnet.state_dict()[k]) for k, v in state.items()):
                    assert entry["sha256"] == {sha!r}, name
                    return
            raise AssertionError("no checkpoint matches")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=1)


def test_unknown_demo_checkpoint_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    pytester.makepyfile("def test_it(digits_resnet):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--demo-checkpoint", "nope")
    assert result.ret != 0
    assert "--demo-checkpoint nope: unknown checkpoint" in result.stdout.str() + result.stderr.str()


def test_a_weights_file_of_no_demo_architecture_is_a_usage_error(pytester: pytest.Pytester
                                                                 ) -> None:
    torch.save({"w": torch.zeros(3)}, pytester.path / "other.pt")
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    pytester.makepyfile("def test_it(digits_resnet):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--demo-checkpoint",
                                           str(pytester.path / "other.pt"))
    assert result.ret != 0
    assert "holds weights of none of the demo architectures" in (
        result.stdout.str() + result.stderr.str())


def test_checkpoint_files_match_manifest() -> None:
    for entry in read_manifest().values():
        assert sha256_file(CHECKPOINT_DIR / entry["file"]) == entry["sha256"]


# The root conftest is the demo plugin plus the suite's own configure: both must run (a
# second ``pytest_configure`` there once shadowed the demo's, and ``DEMO_CHECKPOINT``
# stopped choosing the weights; only the CI recipe's run noticed).
ROOT_SPEC = """\
unitablate: 1
model: digits_resnet
data: digits_test
checks:
  - layer: layer3.0
    units: [1]
    expect:
      overall: {max_drop: 50%}
"""


def test_the_demo_checkpoint_variable_still_chooses_the_weights(tmp_path: Path) -> None:
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "s.yaml").write_text(ROOT_SPEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(DEMO_CHECKPOINT="resnet-retrained", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "pytest", "--unitablate-spec", "s.yaml",
                           "-p", "no:randomly", "-p", "no:cacheprovider", "-q",
                           "--unitablate-report", "r.json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["chosen_by"] == {"DEMO_CHECKPOINT": "resnet-retrained"}
