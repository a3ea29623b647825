"""The HTML report in a real headless browser (Chromium from the system packages; skipped without one)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from quantgraph.cli import main

SYN = "synthetic:nodes=300,seed=1"
SECTIONS = ("summary", "pipeline", "points", "kept-float", "degree", "bits-degree", "training")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium/Chrome on PATH (Debian: apt-get install chromium)")


def _load(browser: str, page: Path, *extra: str) -> tuple[str, list[str]]:
    """The DOM after load, and the page's console messages (errors, uncaught exceptions, failed loads)."""
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            *extra,
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("browser")
    ckpt = work / "gcn.pt"
    assert main(["train", "--arch", "gcn", "--data", SYN, "--epochs", "20", "--quiet", "-o", str(ckpt)]) == 0
    reports = []
    for name, extra in (("int8", ["--backend", "onnx-int"]), ("int4", ["--bits", "4"])):
        rep = work / f"{name}.json"
        args = ["compile", str(ckpt), "--data", SYN, *extra, "-o", str(work / f"{name}.onnx")]
        assert main([*args, "--report", str(rep), "--html", str(work / f"{name}.html"), "--quiet"]) == 0
        reports.append(str(rep))
    assert main(["compare", *reports, "-o", str(work / "cmp.html"), "--quiet"]) == 0
    return {"report": work / "int8.html", "compare": work / "cmp.html", "work": work}


def test_console_errors_are_detected(pages):
    """The check below can fail: a page with a script error is caught."""
    bad = pages["work"] / "bad.html"
    bad.write_text("<html><body><p>x</p><script>notDefined();</script></body></html>")
    _dom, console = _load(_browser(), bad)
    assert any("notDefined" in line for line in console)


def test_report_page_loads_without_console_errors_and_shows_every_section(pages):
    browser = _browser()
    dom, console = _load(browser, pages["report"])
    assert console == []
    for sid in SECTIONS:
        assert re.search(rf'<section id="{sid}"><h2>[^<]+</h2>', dom), sid
    assert dom.count("<svg") >= 3
    shot = pages["work"] / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            pages["report"].resolve().as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    from PIL import Image

    with Image.open(shot) as image:
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text and plots were drawn, not a blank page


def test_compare_page_loads_without_console_errors(pages):
    dom, console = _load(_browser(), pages["compare"])
    assert console == []
    assert '<section id="compare">' in dom and '<section id="pareto">' in dom and "<svg" in dom
