"""The HTML report: self-contained, escaped, and rendered by a real headless browser."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from pytest_unitablate.analysis.html_report import write_html_report


def _frames() -> tuple[pd.DataFrame, pd.DataFrame, list[dict[str, object]]]:
    rows = []
    for u in range(6):
        rows.append({"unit": u, "target": "overall", "n": 60, "baseline": 0.9,
                     "ablated": 0.9 - 0.01 * u, "drop": 0.01 * u})
        for k in range(3):
            rows.append({"unit": u, "target": k, "n": 20, "baseline": 0.9,
                         "ablated": 0.9 - 0.1 * ((u + k) % 4), "drop": 0.1 * ((u + k) % 4)})
    attrs = pd.DataFrame({"unit": range(6), "selectivity": [0.1 * u for u in range(6)]})
    checks = [{"id": "conv5-u1-two-min_drop", "spec": "s.yaml", "line": 9, "target": "two",
               "n": 20, "baseline": 0.9, "ablated": 0.5, "drop": 0.4, "ci_low": 0.2,
               "ci_high": 0.6, "constraint": "min_drop", "threshold": 0.2, "outcome": "passed"},
              {"id": "x", "spec": "s.yaml", "line": 12, "target": "<script>alert(1)</script>",
               "outcome": "failed"}]
    return pd.DataFrame(rows), attrs, checks


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.tags.append(tag)


def test_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    drops, attrs, checks = _frames()
    out = tmp_path / "r.html"
    names = {0: "zero", 1: "one", 2: "two"}
    write_html_report(out, drops=drops, attributes=attrs, checks=checks, class_names=names)
    text = out.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    parser = _Collect()
    parser.feed(text)
    assert parser.tags.count("svg") == 3  # heatmap + two scatter plots (matplotlib)
    assert "1 failed, 1 passed" in text
    # the heatmap names its axes and the classes; the overall-vs-class plot is in pp on
    # equal axes with the y = x line
    for label in ("class", "unit (largest class drop first)", "zero", "one", "two",
                  "class drop when the unit is ablated (pp)", "overall drop (pp)",
                  "largest class drop (pp)", "y = x", "class selectivity"):
        assert f">{label}<" in text, label
    again = tmp_path / "again.html"
    write_html_report(again, drops=drops, attributes=attrs, checks=checks, class_names=names)
    assert again.read_bytes() == out.read_bytes()  # the same data, the same page


def _png_is_not_blank(path: Path) -> bool:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            chunks.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    return len(set(raw[i] for i in range(0, len(raw), 7))) > 8


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing on CI: `make test` installs it (apt chromium)")
        pytest.skip("chromium not installed (make test installs it)")
    drops, attrs, checks = _frames()
    out = tmp_path / "r.html"
    write_html_report(out, drops=drops, attributes=attrs, checks=checks)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", out.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.stdout.count("<svg") == 3 and "conv5-u1-two-min_drop" in dom.stdout
    png = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={png}", "--window-size=1200,1400",
                    out.as_uri()], capture_output=True, timeout=120)
    assert png.exists() and _png_is_not_blank(png)
