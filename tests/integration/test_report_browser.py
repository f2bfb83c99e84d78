"""The report opens in a real browser (headless Chromium) and renders a page that is not blank."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.report_chain import shared_report

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
]
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium() -> str:
    """The installed Chromium (or Chrome); a skip that says why when there is none (tests never install it)."""
    found = next((p for p in map(shutil.which, NAMES) if p), None)
    if found is None:
        pytest.skip(
            f"No Chromium or Chrome on PATH ({', '.join(NAMES)}); install one (e.g. 'apt-get install "
            "chromium') to run the browser check."
        )
    return found


def screenshot(browser: str, page: Path, png: Path, width: int, height: int) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="cxrjepa-chromium-")
    try:
        return subprocess.run(
            [
                browser,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_the_report_renders_in_headless_chromium(tmp_path_factory, tmp_path):
    from PIL import Image

    browser = chromium()
    report = shared_report(tmp_path_factory)
    shot = tmp_path / "report.png"
    res = screenshot(browser, report / "index.html", shot, 1366, 3000)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert img.shape[:2] == (3000, 1366)
    grey = img.mean(axis=2)
    # not blank: text, tables and figures give many dark and mid-tone pixels and real contrast
    assert grey.std() > 20
    assert (grey < 100).mean() > 0.005  # text and images
    assert len(np.unique(img.reshape(-1, 3)[::7], axis=0)) > 500  # anti-aliased text, figures, colours
    # the figures were decoded and drawn: their bar and line colours cover real areas of the page
    colours = [(76, 120, 168), (31, 119, 180), (255, 127, 14)]  # count bars, first and second run
    drawn = sum((np.abs(img - np.array(c)).sum(axis=2) < 40).mean() for c in colours)
    assert drawn > 0.002
    # the title bar area (the h1) holds dark text on the light background
    top = grey[20:90, 250:900]
    assert (top < 80).mean() > 0.01
    # a phone-sized window also lays the page out (the side navigation folds away)
    small = tmp_path / "small.png"
    res = screenshot(browser, report / "index.html", small, 420, 900)
    assert res.returncode == 0 and small.is_file()
    assert np.asarray(Image.open(small).convert("L")).std() > 20
    keep = os.environ.get("CXRJEPA_REPORT_SCREENSHOT")
    if keep:  # look at it yourself: CXRJEPA_REPORT_SCREENSHOT=/tmp/shot.png pytest ...
        shutil.copy(shot, keep)
