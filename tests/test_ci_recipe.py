"""The CI recipe in examples/ci: valid for its CI service, and its steps work on the demo.

The workflow files are checked against the schemas check-jsonschema ships for GitHub
workflows and GitLab CI (offline); ``examples/ci/run_locally.py`` runs their jobs on a copy
of the repository (shell steps as written; checkout, artifacts and the cache emulated).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "examples" / "ci"
SCHEMAS = {"github-actions.yml": "vendor.github-workflows", "gitlab-ci.yml": "vendor.gitlab-ci"}


def _validate(path: Path, schema: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("check-jsonschema")
    return subprocess.run([str(exe), "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_recipe_is_valid_for_its_ci_service(name: str, tmp_path: Path) -> None:
    proc = _validate(CI / name, SCHEMAS[name])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and the check can fail: a job whose steps (script) are a number is refused
    broken = tmp_path / name
    text = (CI / name).read_text()
    broken.write_text(text.replace("runs-on: ubuntu-latest", "runs-on: 42\n    steps: 7", 1)
                      if name.startswith("github") else text.replace("stage: train",
                                                                     "stage: [1, 2]", 1))
    assert _validate(broken, SCHEMAS[name]).returncode != 0


def _run(recipe: str, store: Path, work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CI / "run_locally.py"), recipe, "--skip-install", "--store",
         str(store), "--workdir", str(work), *extra],
        capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.recipe
def test_github_recipe_fails_on_the_regression_and_reuses_its_cache(tmp_path: Path) -> None:
    store = tmp_path / "store"
    cold = _run("github", store, tmp_path / "cold")
    # the candidate is the demo's fine-tune that silenced two protected units: exit 1
    assert cold.returncode == 1, cold.stdout[-3000:] + cold.stderr[-3000:]
    assert "2 failed, 23 passed" in cold.stdout
    reports = store / "artifact" / "unitablate-reports" / "reports"
    report = json.loads((reports / "unitablate.json").read_text())
    assert sorted(i["id"] for i in report["items"] if i["outcome"] == "failed") == [
        "layer3.0-u0-four-min_drop", "layer3.0-u15-six-min_drop"]
    assert (reports / "junit.xml").read_text().count("<failure") == 2
    assert "layer3.0-u0-four-min_drop" in (reports / "unitablate.html").read_text()
    (cache,) = (store / "cache").iterdir()  # saved although the job failed
    entries = {p.name: p.stat().st_mtime_ns for p in cache.rglob("*.npz")}
    assert entries
    first = (reports / "unitablate.json").read_bytes()

    warm = _run("github", store, tmp_path / "warm")
    assert warm.returncode == 1
    assert f"restored cache {cache.name}" in warm.stdout
    # every evaluation was answered from the restored cache: no entry was added
    work_cache = tmp_path / "warm" / ".pytest_cache" / "d" / "unitablate"
    assert {p.name for p in work_cache.rglob("*.npz")} == set(entries)
    assert (reports / "unitablate.json").read_bytes() == first


@pytest.mark.slow
@pytest.mark.recipe
def test_gitlab_recipe_passes_the_reference_and_empties_a_cache_of_other_code(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = _run("gitlab", store, tmp_path / "a", "--candidate", "resnet")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "25 passed" in first.stdout
    (cache,) = (store / "cache").iterdir()
    stored = cache / ".pytest_cache" / "d" / "unitablate"
    made = {p.name: p.stat().st_mtime_ns for p in stored.rglob("*.npz")}
    assert made and (stored / "code.sha256").exists()

    def entries(work: Path) -> dict[str, int]:
        found = (work / ".pytest_cache" / "d" / "unitablate").rglob("*.npz")
        return {p.name: p.stat().st_mtime_ns for p in found}

    # the same code: the restored entries answer, none is written again
    same = _run("gitlab", store, tmp_path / "b", "--candidate", "resnet")
    assert same.returncode == 0 and entries(tmp_path / "b") == made
    # helper code the cache key cannot see has changed (the stamp disagrees): the restored
    # cache is emptied before the run, and every entry is computed anew
    (stored / "code.sha256").write_text("code that is no longer there\n")
    changed = _run("gitlab", store, tmp_path / "c", "--candidate", "resnet")
    assert changed.returncode == 0
    fresh = entries(tmp_path / "c")
    assert set(fresh) == set(made) and min(fresh.values()) > max(made.values())


@pytest.mark.slow
@pytest.mark.recipe
@pytest.mark.parametrize(("recipe", "reports"), [
    ("github", "unitablate-reports/reports"), ("gitlab", "unitablate/reports")])
def test_each_job_installs_what_it_runs_in_a_clean_venv(tmp_path: Path, recipe: str,
                                                         reports: str) -> None:
    """Every job in a new virtualenv, as a CI runner starts it: the train job's Python
    needs the torch its own install step put there, and the check job gets the plugin from
    the repository itself (UNITABLATE_SOURCE), not from a package index."""
    proc = subprocess.run(
        [sys.executable, str(CI / "run_locally.py"), recipe, "--clean-venv", "--store",
         str(tmp_path / "store"), "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]  # the candidate's regression, not an install
    assert "job train runs in a new virtualenv" in out
    assert "job unitablate runs in a new virtualenv" in out
    assert "2 failed, 23 passed" in out
    assert "pytest-unitablate @ ${UNITABLATE_SOURCE}" in out
    # the report came from the checks job's own venv, which installed the plugin
    report = json.loads((tmp_path / "store" / "artifact" / reports / "unitablate.json"
                         ).read_text())
    assert report["chosen_by"] == {"DEMO_CHECKPOINT": "artifacts/candidate.pt"}
