"""The HTML report in a real browser: Debian's headless Chromium, driven by Playwright."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from scratchdet.study.report import build_report
from tests.study.fixtures import paper_like_study, write_arm

ARTIFACTS = Path(os.environ.get("SCRATCHDET_TEST_ARTIFACTS", "runs/test-artifacts"))
# Flags for a machine without network or display (its blocked connections would otherwise spam the console).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed by the test set-up when absent (CI runs as root on Debian)."""
    path = shutil.which("chromium")
    if path is None:
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=environment, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, env=environment,
                       capture_output=True)  # fmt: skip
        path = shutil.which("chromium")
    assert path is not None, "chromium could not be installed"
    return path


@contextmanager
def opened(report: Path, chromium: str, problems: list[str]) -> Iterator[Any]:
    """The report loaded in headless Chromium; console errors, page errors and dialogs (a script that ran) are
    appended to `problems`."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("dialog", lambda dialog: problems.append(f"a dialog opened: {dialog.message}"))
        page.goto(report.as_uri(), wait_until="load")
        try:
            yield page
        finally:
            browser.close()


def test_report_figures_load_without_console_errors(tmp_path: Path, chromium: str) -> None:
    paper_like_study(tmp_path)
    write_arm(tmp_path, "scratch_gn_3x_n200_seed0", init="scratch", schedule="3x", subset=200, train_images=200,
              curve=[(100, 4.0), (900, 12.0)])  # fmt: skip
    problems: list[str] = []
    with opened(build_report(tmp_path), chromium, problems) as page:
        images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
        verdicts = page.locator("li strong").all_inner_texts()
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert [alt for alt, _, _ in images] == ["ap_curves", "accounting", "less_data", "pretraining_gain", "overfitting"]
    assert all(complete and width > 300 for _, complete, width in images), images
    assert len(verdicts) == 4
    assert problems == []


def test_report_gallery_loads_in_the_browser(tmp_path: Path, chromium: str) -> None:
    from tests.study.test_gallery import HOSTILE, _study

    _study(tmp_path, names=(HOSTILE, "b"))
    problems: list[str] = []
    with opened(build_report(tmp_path), chromium, problems) as page:
        cells = page.evaluate(
            "Array.from(document.querySelectorAll('table.gallery img')).map(i => [i.complete, i.naturalWidth])"
        )
        headers = page.locator("table.gallery").first.locator("th").all_inner_texts()
        page.locator("table.gallery").first.screenshot(path=str(ARTIFACTS / "gallery.png"))
    assert headers == ["image", "ground truth", "scratch_gn_3x_seed0", "pretrained_gn_3x_seed0"]
    assert len(cells) >= 3 * 6 and all(complete and width > 0 for complete, width in cells), cells
    assert problems == []
