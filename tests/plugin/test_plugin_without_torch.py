"""Without torch, a spec run stops with one line that names the fix, and exit 4.

torch is a dependency, but an environment can lack it (``pip install --no-deps``, a CI image
built for another project). A blocker on ``sys.meta_path`` (a ``sitecustomize.py`` first on
``PYTHONPATH``) makes torch unimportable in the subprocess, as if it were not installed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tiny_source import spec

pytest_plugins = ["pytester"]

BLOCKER = '''
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
'''

SPEC = """\
checks:
  - layer: hidden
    units: [1]
    expect:
      one: {min_drop: 90%}
"""

FIX = "needs torch, which is not installed: pip install torch (CPU-only: pip install torch"


@pytest.fixture
def no_torch(tiny: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    blocker = tiny.path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    monkeypatch.setenv("PYTHONPATH", f"{blocker}{':' + str(tiny.path)}")
    spec(tiny, SPEC)
    return tiny


@pytest.mark.parametrize("how", ["option", "collected"])
def test_a_spec_run_without_torch_is_a_usage_error(no_torch: pytest.Pytester, how: str
                                                   ) -> None:
    args = ["--unitablate-spec", "spec.yaml"] if how == "option" else ["spec.yaml"]
    result = no_torch.runpytest_subprocess(*args, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str() + result.stderr.str()
    assert FIX in text
    assert "Traceback" not in text and "ModuleNotFoundError" not in text


def test_check_without_torch_is_a_usage_error(no_torch: pytest.Pytester) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest_unitablate", "check", "spec.yaml"],
                          cwd=Path(no_torch.path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 4
    assert proc.stderr.strip().splitlines() == [f"ERROR: check {FIX} "
                                                "--index-url https://download.pytorch.org/"
                                                "whl/cpu)"]
