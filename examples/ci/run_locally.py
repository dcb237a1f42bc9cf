"""Run the CI recipe's jobs on this machine, step by step, so the recipe cannot rot.

Reads ``github-actions.yml`` or ``gitlab-ci.yml`` from this folder and runs its jobs in
order in a copy of the repository: every shell step (``run:`` / ``script:``) as written,
with the job's environment; the steps a CI service performs itself are emulated here:
checkout (the copy), setup-python (this interpreter), artifacts (copied between jobs),
and the cache (saved under the key the recipe computes, ``hashFiles`` included, and
restored on the next run with the same key). ``--skip-install`` leaves out the steps that
install packages (the test suite's environment already has them). ``--clean-venv`` runs
every job in a new virtualenv of its own, as a CI runner starts each job from a fresh
image: a job that does not install what it runs fails here as it would there. Then the
plugin is installed from this copy of the repository (``UNITABLATE_SOURCE``), and where
the PyTorch CPU index cannot be reached (an offline machine), the install lines ask the
default index for ``--offline-torch`` instead (a CPU wheel on this project's CI machines).

    python examples/ci/run_locally.py github --skip-install
    python examples/ci/run_locally.py github --clean-venv
    python examples/ci/run_locally.py gitlab --store /tmp/ci-store --candidate resnet

Exit status: the first failing job's, as CI would report it (1 when a check missed).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RECIPES = {"github": HERE / "github-actions.yml", "gitlab": HERE / "gitlab-ci.yml"}


def _copy_repo(dest: Path) -> None:
    """The files git tracks (or would), as a fresh checkout has them."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def hash_files(work: Path, patterns: list[str]) -> str:
    """GitHub's ``hashFiles``: a sha256 over the sha256 of every matching file, in order."""
    outer = hashlib.sha256()
    for pattern in patterns:
        for name in sorted(glob.glob(pattern, root_dir=work, recursive=True)):
            if (work / name).is_file():
                outer.update(hashlib.sha256((work / name).read_bytes()).digest())
    return outer.hexdigest()


def _expand(text: str, work: Path) -> str:
    def one(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        if expr == "runner.os":
            return "Linux"
        call = re.fullmatch(r"hashFiles\((.*)\)", expr)
        if call:
            return hash_files(work, re.findall(r"'([^']*)'", call.group(1)))
        raise SystemExit(f"run_locally: cannot evaluate ${{{{ {expr} }}}}")
    return re.sub(r"\$\{\{(.*?)\}\}", one, text)


def _shell(script: str, work: Path, env: dict[str, str], flags: str = "-euo") -> int:
    """GitHub runs ``bash -e {0}`` with pipefail; GitLab one session per job, stopping at
    the first failing line."""
    print(f"+ {script.strip()}", flush=True)
    return subprocess.run(["bash", flags, "pipefail", "-c", script], cwd=work,
                          env=env).returncode


CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _reachable(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except (OSError, ValueError):
        return False


class _Runner:
    def __init__(self, work: Path, store: Path, skip_install: bool, env: dict[str, str],
                 venvs: Path | None = None, offline_torch: str = "torch==2.13.0") -> None:
        self.work, self.store, self.skip_install = work, store, skip_install
        self.env = env
        #: a new virtualenv per job under this folder (``--clean-venv``)
        self.venvs = venvs
        self.offline_torch = offline_torch
        self.cpu_index = venvs is None or _reachable(f"{CPU_INDEX}/torch/")

    def job_env(self, name: str, env: dict[str, str]) -> dict[str, str]:
        """With ``--clean-venv``: a new virtualenv for job ``name``, first on ``PATH``,
        and the plugin's source pointed at this copy of the repository."""
        if self.venvs is None:
            return env
        venv = self.venvs / name
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        path = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                               if Path(p) != Path(sys.executable).parent)
        print(f"[run_locally] job {name} runs in a new virtualenv {venv}", flush=True)
        return {**env, "VIRTUAL_ENV": str(venv), "UNITABLATE_SOURCE": f"file://{self.work}",
                "PATH": f"{venv / 'bin'}{os.pathsep}{path}"}

    def script(self, text: str) -> str:
        """Install lines as written, except where the PyTorch CPU index cannot be reached:
        they then ask the default index for ``offline_torch``."""
        if self.cpu_index or self.venvs is None:
            return text
        return re.sub(rf"torch --index-url {re.escape(CPU_INDEX)}",
                      f"'{self.offline_torch}'", text)

    def _copy_in(self, src: Path, dest: Path) -> None:
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        elif src.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)

    def save(self, kind: str, name: str, paths: list[str]) -> None:
        target = self.store / kind / name
        shutil.rmtree(target, ignore_errors=True)
        for p in paths:
            self._copy_in(self.work / p, target / p)
        print(f"[run_locally] saved {kind} {name}: {', '.join(paths)}", flush=True)

    def restore(self, kind: str, name: str) -> bool:
        source = self.store / kind / name
        if not source.exists():
            print(f"[run_locally] no {kind} {name}", flush=True)
            return False
        self._copy_in(source, self.work)
        print(f"[run_locally] restored {kind} {name}", flush=True)
        return True

    def github(self, doc: dict[str, Any]) -> int:
        for job_name, job in _job_order(doc["jobs"], "needs"):
            print(f"[run_locally] job {job_name}", flush=True)
            env = self.job_env(job_name, {**self.env, **{k: str(v) for k, v in (
                job.get("env") or {}).items()}})
            outputs: dict[str, dict[str, str]] = {}
            status = 0
            for step in job["steps"]:
                uses = str(step.get("uses", ""))
                if not _should_run(str(step.get("if", "")), status, outputs):
                    continue
                w = {k: _outputs(str(v), outputs) for k, v in (step.get("with") or {}).items()}
                if "run" in step:
                    if self.skip_install and str(step.get("name", "")).startswith("Install"):
                        print(f"[run_locally] skipped: {step['name']}", flush=True)
                        continue
                    status = _shell(self.script(_expand(step["run"], self.work)),
                                    self.work, {**env, **(step.get("env") or {})})
                elif uses.startswith("actions/cache/restore@"):
                    key = _expand(w["key"], self.work)
                    hit = self.restore("cache", key)
                    outputs[str(step.get("id"))] = {"cache-hit": str(hit).lower(),
                                                    "cache-primary-key": key,
                                                    "outcome": "success"}
                elif uses.startswith("actions/cache/save@"):
                    self.save("cache", w["key"], [w["path"]])
                elif uses.startswith("actions/upload-artifact@"):
                    self.save("artifact", w["name"], [str(w["path"]).rstrip("/")])
                elif uses.startswith("actions/download-artifact@"):
                    src = self.store / "artifact" / w["name"]
                    # upload keeps the path below the workspace; download puts the files
                    # in `path` (as actions/download-artifact does for a single path)
                    for f in src.rglob("*"):
                        if f.is_file():
                            self._copy_in(f, self.work / w.get("path", ".") / f.name)
                elif not uses.startswith(("actions/checkout@", "actions/setup-python@")):
                    raise SystemExit(f"run_locally: no emulation of {uses}")
            if status:
                return status
        return 0

    def gitlab(self, doc: dict[str, Any]) -> int:
        stages = doc.get("stages", ["build", "test", "deploy"])
        jobs = [(n, j) for n, j in doc.items() if isinstance(j, dict) and "script" in j]
        jobs.sort(key=lambda nj: stages.index(nj[1].get("stage", "test")))
        for job_name, job in jobs:
            print(f"[run_locally] job {job_name}", flush=True)
            env = {**self.env, "CI_PROJECT_DIR": str(self.work)}
            for k, v in (job.get("variables") or {}).items():
                env[k] = os.path.expandvars(str(v).replace("$CI_PROJECT_DIR", str(self.work)))
            env = self.job_env(job_name, env)
            for need in job.get("needs", []):
                self.restore("artifact", str(need))
            caches = job.get("cache") or []
            keys = []
            for cache in caches if isinstance(caches, list) else [caches]:
                key = cache["key"]
                name = f"{key.get('prefix', '')}-" + hash_files(self.work, key["files"])
                self.restore("cache", name)
                keys.append((name, cache["paths"]))
            lines = []
            for line in job["script"]:  # one shell session, as GitLab's runner uses
                if self.skip_install and "pip install" in line:
                    print(f"[run_locally] skipped: {line}", flush=True)
                    continue
                lines.append(line)
            status = _shell(self.script("\n".join(lines)), self.work, env, flags="-eo")
            listed = caches if isinstance(caches, list) else [caches]
            for cache, (name, paths) in zip(listed, keys, strict=True):
                if status == 0 or cache.get("when") == "always":  # on_success by default
                    self.save("cache", name, paths)
            artifacts = job.get("artifacts") or {}
            if status == 0 or artifacts.get("when") == "always":
                self.save("artifact", job_name, list(artifacts.get("paths", [])))
            if status:
                return status
        return 0


def _outputs(text: str, outputs: dict[str, dict[str, str]]) -> str:
    """``${{ steps.ID.outputs.NAME }}`` from the emulated steps' outputs."""
    def one(match: re.Match[str]) -> str:
        return outputs.get(match.group(1), {}).get(match.group(2), "")
    return re.sub(r"\$\{\{\s*steps\.([\w-]+)\.outputs\.([\w-]+)\s*\}\}", one, text)


def _should_run(condition: str, status: int, outputs: dict[str, dict[str, str]]) -> bool:
    """The ``if:`` forms the recipe uses: none (success only), ``always()``, and
    ``&&`` of ``steps.ID.outcome == 'success'`` and ``steps.ID.outputs.NAME != 'VALUE'``."""
    if not condition:
        return status == 0
    parts = [p.strip() for p in condition.split("&&")]
    ok = True
    for part in parts:
        if part == "always()":
            continue
        test = re.fullmatch(r"steps\.([\w-]+)\.(?:outputs\.)?([\w-]+) (!=|==) '(.*)'", part)
        if test is None:
            raise SystemExit(f"run_locally: cannot evaluate if: {condition}")
        value = outputs.get(test.group(1), {}).get(test.group(2))
        ok = ok and ((value != test.group(4)) if test.group(3) == "!=" else
                     (value == test.group(4)))
    return ok and ("always()" in parts or status == 0)


def _job_order(jobs: dict[str, Any], key: str) -> list[tuple[str, Any]]:
    done: list[str] = []
    while len(done) < len(jobs):
        for name, job in jobs.items():
            needs = job.get(key) or []
            needs = [needs] if isinstance(needs, str) else needs
            if name not in done and all(n in done for n in needs):
                done.append(name)
    return [(n, jobs[n]) for n in done]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--store", type=Path, default=None,
                        help="where caches and artifacts persist between runs (default: a "
                        "temporary folder, so every run is cold)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="run in this copy of the repository (default: a temporary one)")
    parser.add_argument("--candidate", default=None,
                        help="the demo checkpoint the train job hands over (default: the "
                        "recipe's, resnet-finetuned)")
    parser.add_argument("--skip-install", action="store_true",
                        help="leave out the steps that install packages")
    parser.add_argument("--clean-venv", action="store_true",
                        help="run every job in a new virtualenv of its own (installs run)")
    parser.add_argument("--offline-torch", default="torch==2.13.0", metavar="REQ",
                        help="with --clean-venv, where the PyTorch CPU index cannot be "
                        "reached: what the install lines ask the default index for instead")
    args = parser.parse_args(argv)
    if args.clean_venv and args.skip_install:
        parser.error("--clean-venv runs the install steps: drop --skip-install")
    doc = yaml.safe_load(RECIPES[args.recipe].read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["CI"] = "true"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if args.candidate:
        env["CANDIDATE"] = args.candidate
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp) / "work"
        if not (work / "pyproject.toml").exists():
            work.mkdir(parents=True, exist_ok=True)
            _copy_repo(work)
        store = args.store or Path(tmp) / "store"
        venvs = Path(tmp) / "venvs" if args.clean_venv else None
        runner = _Runner(work, store, args.skip_install, env, venvs, args.offline_torch)
        return runner.github(doc) if args.recipe == "github" else runner.gitlab(doc)


if __name__ == "__main__":
    sys.exit(main())
