"""The review page and the comparison page, from real runs, rendered by headless Chromium:
the screenshot must show the failures first (red badges above any green one)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_source import spec

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.slow

BODY = """\
checks:
  - layer: hidden
    units: [1]
    expect:
      one: {{min_drop: 90%}}
      overall: {{max_drop: 30%}}
  - layer: hidden
    units: [3]
    expect:
      three: {{min_drop: {three}}}
  - layer: hidden
    every_unit:
      expect:
        overall: {{max_drop: {every}}}
"""
RED, GREEN = (198, 40, 40), (46, 125, 50)


def _browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: `make test` installs it (apt chromium)")
        pytest.skip("chromium not installed (make test installs it)")
    return found


def _render(page: Path, tmp: Path, height: int = 1100) -> tuple[str, Path]:
    browser = _browser()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120).stdout
    png = tmp / f"{page.stem}-{height}.png"
    subprocess.run([browser, *flags, f"--screenshot={png}", f"--window-size=1300,{height}",
                    page.as_uri()], capture_output=True, timeout=120)
    return dom, png


def _first_row(png: Path, colour: tuple[int, int, int]) -> int | None:
    """The first pixel row holding the badge colour (None when it is nowhere)."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    width, height = image.size
    pixels = image.load()
    assert pixels is not None
    for y in range(height):
        if any(all(abs(a - b) <= 8 for a, b in zip(pixels[x, y], colour, strict=True))
               for x in range(0, width, 2)):
            return y
    return None


def test_review_and_comparison_pages_show_failures_first(tiny: pytest.Pytester,
                                                         tmp_path: Path) -> None:
    spec(tiny, BODY.format(three="20%", every="20%"))
    failing = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report",
                             "candidate.json", "--unitablate-html", "review.html")
    failing.assert_outcomes(passed=2, failed=2)
    dom, png = _render(tiny.path / "review.html", tmp_path)
    assert "Failures (2)" in dom and "hidden-u3 three: drop 0.0 pp, needs &gt;= 20.0 pp" in dom
    assert "every_unit; deciding unit" in dom and "weights sha256" in dom
    red, green = _first_row(png, RED), _first_row(png, GREEN)
    assert red is not None and green is not None and red < green  # failures first
    # the unit x class heatmap (class names, axis titles) and overall vs class drop; the
    # plots need the analysis extra (matplotlib, pandas), which the nox matrix leaves out:
    # without it the page says what to install instead
    if importlib.util.find_spec("matplotlib") and importlib.util.find_spec("pandas"):
        assert "Unit x class damage" in dom and "Overall drop against the class" in dom
        for text in (">class<", ">unit (largest class drop first)<", ">zero<", ">three<",
                     "class drop when the unit is ablated (pp)", ">overall drop (pp)<",
                     ">y = x<"):
            assert text in dom, text
        _, tall = _render(tiny.path / "review.html", tmp_path, height=3200)
        assert _first_row(tall, (103, 0, 31)) is not None  # hidden-u1's 100 pp cell
    else:
        assert "need matplotlib and pandas: pip install 'pytest-unitablate[analysis]'" \
            in dom.replace("&#x27;", "'")

    spec(tiny, BODY.format(three="0%", every="100%"))
    passing = tiny.runpytest("--unitablate-spec", "spec.yaml", "--unitablate-report",
                             "reference.json")
    passing.assert_outcomes(passed=4)
    compare = subprocess.run(
        [sys.executable, "-m", "pytest_unitablate", "compare", "reference.json",
         "candidate.json", "--html", "compare.html"], cwd=tiny.path, capture_output=True,
        text=True, timeout=120)
    assert compare.returncode == 1, compare.stderr
    assert "outcome (2):" in compare.stdout
    dom, png = _render(tiny.path / "compare.html", tmp_path)
    assert "outcome (2)" in dom and "passed -&gt; failed" in dom
    assert _first_row(png, RED) is not None
