"""A team's first day (issue 31), in the files a newcomer reads and runs: the demo's
Makefile target, the CI recipes, the generated reference page and the getting-started
page. (What the runs print and write is tests/plugin/test_first_day.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _target(name: str) -> str:
    """The recipe lines of a Makefile rule (``demo``, or ``$(DEMO_STAMP)`` as written)
    and of the rules it depends on that the Makefile defines."""
    text = (ROOT / "Makefile").read_text()
    found = re.search(rf"^{re.escape(name)}:([^\n]*)\n((?:\t[^\n]*\n)*)", text,
                      re.MULTILINE)
    assert found, name
    recipe = found.group(2)
    for dep in found.group(1).split():
        if re.search(rf"^{re.escape(dep)}:", text, re.MULTILINE):
            recipe += _target(dep)
    return recipe


def test_make_demo_installs_cpu_torch_and_the_package_only() -> None:
    """The demo needs no torchvision, no test or dev tools: `make demo` built a 6 GB venv
    with the CUDA build when it reused `make setup`'s."""
    recipe = _target("demo")
    makefile = (ROOT / "Makefile").read_text()
    assert "DEMO_VENV := .venv-demo" in makefile
    assert "CPU_INDEX ?= https://download.pytorch.org/whl/cpu" in makefile
    assert "--index-url $(CPU_INDEX)" in recipe
    assert "pip install -q -e ." in recipe
    assert "[dev" not in recipe and "bench" not in recipe
    assert "torchvision" not in recipe and "requirements-torch.txt" not in recipe
    assert "--unitablate-spec specs/resnet.yaml" in recipe


def _install_lines(recipe: str) -> list[tuple[str, str]]:
    """(job, line) of every pip install in a CI recipe."""
    doc = yaml.safe_load((ROOT / "examples" / "ci" / recipe).read_text())
    out = []
    if "jobs" in doc:
        for job, spec in doc["jobs"].items():
            for step in spec["steps"]:
                out += [(job, line) for line in str(step.get("run", "")).splitlines()
                        if "pip install" in line]
    else:
        for job, spec in doc.items():
            if isinstance(spec, dict) and "script" in spec:
                out += [(job, line) for line in spec["script"] if "pip install" in line]
    return out


def test_every_ci_job_installs_what_it_runs_and_the_plugin_comes_from_its_repository(
        ) -> None:
    for recipe in ("github-actions.yml", "gitlab-ci.yml"):
        lines = _install_lines(recipe)
        jobs = {job for job, _ in lines}
        assert {"train", "unitablate"} <= jobs, (recipe, jobs)
        text = (ROOT / "examples" / "ci" / recipe).read_text()
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        assert "torchvision" not in code, recipe  # the demo's model does not use it
        assert "cache: pip" not in text, recipe  # setup-python fails without requirements
        assert any('"pytest-unitablate @ ${UNITABLATE_SOURCE}"' in line
                   for _, line in lines), recipe
        assert "UNITABLATE_SOURCE: git+https://" in text, recipe
        assert "python -c \"import sys, torch" in text  # the train job really uses torch


def _prose(markdown: str) -> list[str]:
    """The lines of ``markdown`` outside fenced code blocks, without their code spans."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "", line))
    return out


def test_the_reference_page_keeps_placeholders_and_examples_visible() -> None:
    """Markdown took ``<spec>`` for an HTML tag and dropped it, and ``{by: ...}`` rendered
    as ``{file: , sha256: }``: outside code, neither may remain raw."""
    for line in _prose((ROOT / "docs" / "reference.md").read_text()):
        assert not re.search(r"<[A-Za-z]", line), line
        assert "{" not in line, line
    css = (ROOT / "docs" / "stylesheets" / "extra.css").read_text()
    assert "pre-wrap" in css  # code blocks wrap instead of clipping what runs past
    assert "stylesheets/extra.css" in (ROOT / "mkdocs.yml").read_text()


def test_getting_started_commits_the_spec_before_it_diffs_it() -> None:
    """`git diff specs/model.yaml` shows nothing for a file git does not track yet."""
    text = (ROOT / "docs" / "getting-started.md").read_text()
    diff = text.index("git diff specs/model.yaml")
    assert "git add specs/model.yaml" in text[:diff]
