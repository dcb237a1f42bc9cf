"""The user docs: generated pages current, a short README, no project-internal references."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: pages a user reads (the developer pages, CONTRIBUTING and the changelog may cite issues)
USER_DOCS = [ROOT / "README.md", *(ROOT / "docs" / f"{name}.md" for name in (
    "getting-started", "guide", "spec-format", "identity", "ci", "speed", "without-pytest",
    "reproducibility", "reference", "demo", "analysis"))]


def test_generated_pages_are_current() -> None:
    """docs/reference.md (from the code) and docs/index.md (from the README): after changing
    either source, run `python docs/gen_reference.py`."""
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_reference.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_reference_lists_every_option_and_spec_key() -> None:
    import json

    text = (ROOT / "docs" / "reference.md").read_text()
    options = re.findall(r'^    option\("([\w-]+)"',
                         (ROOT / "pytest_unitablate/plugin/options.py").read_text(), re.M)
    assert len(options) >= 15
    for name in options:
        assert f"`--unitablate-{name}" in text, name
    schema = json.loads((ROOT / "pytest_unitablate/spec.schema.json").read_text())
    for key in [*schema["properties"], *schema["$defs"]["check"]["properties"]]:
        assert f"| `{key}` |" in text, key


def test_the_readme_is_a_users_page() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 170
    for heading in ("## Install", "## Your own model in ten minutes", "## Reading a failure",
                    "## In CI"):
        assert heading in lines


def test_user_docs_cite_no_issue_numbers_or_commit_hashes() -> None:
    for page in USER_DOCS:
        text = page.read_text()
        assert not re.search(r"\bissues? \d+\b|#\d{2,}\b", text, re.I), page.name
        for word in re.findall(r"\b[0-9a-f]{7,12}\b", text):
            assert not (re.search(r"[a-f]", word) and re.search(r"\d", word)), (page.name, word)
