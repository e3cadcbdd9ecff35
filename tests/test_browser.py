"""The HTML report in a real browser: headless Chromium renders it, every picture decodes, no console errors.

Chromium is driven through its own command line (--dump-dom, --screenshot), so nothing is downloaded;
where no Chromium is installed the test is skipped (.ci/run installs it when it can).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qpack.converter.cli import app

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Injected into a copy of the page: errors are collected from the first script on, and once the page
# has loaded (pictures included) the findings are written into the DOM for --dump-dom to print.
_FIRST = """<script>window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
const __error = console.error; console.error = (...a) => { window.__errors.push(a.join(" ")); __error(...a); };</script>"""
_LAST = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}));
  const out = document.createElement("pre");
  out.id = "qpack-check";
  out.textContent = JSON.stringify({imgs, errors: window.__errors, rows: document.querySelectorAll("tr").length,
                                    title: document.querySelector("h1") && document.querySelector("h1").textContent});
  document.body.appendChild(out);
});</script>"""


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium installed (apt-get install chromium)")


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_html_report_renders_in_chromium(tmp_path: Path, sample: Path):
    browser = _browser()
    page = tmp_path / "out.html"
    r = CliRunner().invoke(app, ["report", str(sample), "--html", str(page), "--compress", "none", "-q"])
    assert r.exit_code == 0, r.output
    html = page.read_text()
    pictures = html.count("<img")
    assert pictures == 3

    checked = tmp_path / "checked.html"
    checked.write_text(html.replace("<head>", "<head>" + _FIRST, 1).replace("</body>", _LAST + "</body>", 1))
    p = _chromium(browser, tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", checked.as_uri())
    m = re.search(r'<pre id="qpack-check">(.*?)</pre>', p.stdout, re.S)
    assert m, f"no findings in the dumped DOM (exit {p.returncode}): {p.stderr[-2000:]}"
    found = json.loads(m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert len(found["imgs"]) == pictures
    for img in found["imgs"]:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img  # the PNG decoded
    assert found["errors"] == []
    assert found["title"].startswith("qpack report:") and found["rows"] > 10
    assert [line for line in p.stderr.splitlines() if "CONSOLE" in line] == []  # the page has no scripts to log anything

    shot = tmp_path / "shot.png"  # the page itself, unmodified, as the browser draws it
    p = _chromium(browser, tmp_path / "profile", "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), p.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 50  # text, tables and plots, not a blank page


# Injected into a copy of the page: once it has loaded, the layout findings are written into the DOM.
_LAYOUT = """<script>window.addEventListener("load", () => {
  const box = [...document.querySelectorAll(".box")].find(b => [...b.querySelectorAll("th")].some(th => th.textContent === "Tensor"));
  const th = box && box.querySelector("th");
  const name = box && box.querySelector("td.name");
  const out = document.createElement("pre");
  out.id = "qpack-layout";
  out.textContent = JSON.stringify({
    page: document.documentElement.scrollWidth, window: window.innerWidth,
    box: box && {scroll: box.scrollWidth, client: box.clientWidth, right: box.getBoundingClientRect().right},
    sticky: th && getComputedStyle(th).position, wraps: name && getComputedStyle(name).whiteSpace,
    cards: [...document.querySelectorAll(".card .label")].map(e => e.textContent),
    text: document.body.innerText});
  document.body.appendChild(out);
});</script>"""


def test_html_report_opens_with_a_summary_and_fits_the_window(tmp_path: Path, ocr_cls: Path):
    """The page a user opens: a summary in words with the ratio and the output fidelity, labels
    instead of JSON keys, and no horizontal page scroll at 1280 or 800 pixels (the tensor table
    scrolls inside its own box, under a sticky header)."""
    browser = _browser()
    runner = CliRunner()
    qpk, page = tmp_path / "cls.qpk", tmp_path / "r.html"
    assert runner.invoke(app, ["convert", str(ocr_cls), "-o", str(qpk), "--bits", "4", "--per-channel", "-q"]).exit_code == 0
    r = runner.invoke(app, ["report", str(qpk), "--source", str(ocr_cls), "--html", str(page), "--compress", "none", "-q"])
    assert r.exit_code == 0, r.output
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text().replace("</body>", _LAYOUT + "</body>", 1))
    for width in (1280, 800):
        p = _chromium(browser, tmp_path / "profile", f"--window-size={width},1200", "--virtual-time-budget=10000", "--dump-dom",
                      checked.as_uri())
        m = re.search(r'<pre id="qpack-layout">(.*?)</pre>', p.stdout, re.S)
        assert m, f"no findings in the dumped DOM (exit {p.returncode}): {p.stderr[-2000:]}"
        found = json.loads(m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
        assert found["page"] <= found["window"], (width, found["page"])  # no horizontal scroll of the page
        box = found["box"]
        assert box and box["right"] <= found["window"] and found["sticky"] == "sticky" and found["wraps"] == "normal", found
        assert found["cards"][:5] == ["Original model", "Packed (.qpk)", "Compression", "Bits per weight", "Weight SQNR"]
        assert "Output fidelity" in found["cards"]
        text = found["text"]
        assert "x smaller" in text and "8 seeded random inputs" in text and "not measured" not in text
        for key in ("bits_per_weight", "qpk_bytes", "sqnr_db", "ratio_vs_original", "range_coverage"):
            assert key not in text, key
    assert box["scroll"] > box["client"]  # at 800 pixels the tensor table scrolls inside its box
