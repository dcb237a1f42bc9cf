"""The README's demo from a wheel: the specs ship inside unitablate_demo, and
``python -m unitablate_demo init`` writes them with a conftest into any folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from unitablate_demo.__main__ import init

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_specs_are_the_repository_specs() -> None:
    """specs/ is what the docs run; unitablate_demo/specs/ what a wheel carries. After
    changing a spec: cp specs/* unitablate_demo/specs/"""
    repo = {p.name: p.read_bytes() for p in (ROOT / "specs").iterdir() if p.is_file()}
    shipped = {p.name: p.read_bytes() for p in (ROOT / "unitablate_demo" / "specs").iterdir()
               if p.is_file() and p.suffix in (".yaml", ".json")}
    assert shipped == repo


def test_init_writes_the_demo_and_refuses_to_overwrite(tmp_path: Path) -> None:
    written = init(tmp_path)
    assert (tmp_path / "conftest.py") in written
    assert (tmp_path / "specs" / "resnet.yaml").read_bytes() == \
        (ROOT / "specs" / "resnet.yaml").read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        init(tmp_path)
    assert init(tmp_path, force=True) == written


@pytest.mark.slow
@pytest.mark.recipe
def test_the_demo_runs_from_a_wheel_outside_the_repository(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", str(ROOT), "-w", str(wheels)], check=True,
                   capture_output=True, timeout=600)
    (wheel,) = wheels.glob("pytest_unitablate-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("DEMO_CHECKPOINT", None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)

    where = run("-c", "import unitablate_demo, pytest_unitablate; "
                "print(unitablate_demo.__file__); print(pytest_unitablate.__file__)")
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    made = run("-m", "unitablate_demo", "init", "demo")
    assert made.returncode == 0 and "pytest --unitablate-spec specs/resnet.yaml" in made.stdout
    work = work / "demo"
    finetuned = run("-m", "pytest", "--unitablate-spec", "specs/resnet.yaml",
                    "--demo-checkpoint", "resnet-finetuned", "-p", "no:cacheprovider", "-q")
    assert finetuned.returncode == 1, finetuned.stdout[-2000:]
    assert "2 failed, 23 passed" in finetuned.stdout
