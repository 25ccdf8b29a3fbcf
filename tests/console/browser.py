"""Debian's Chromium, headless, driven by Selenium through /usr/bin/chromedriver: nothing is
downloaded, nothing talks to the internet, and each browser gets a fresh profile."""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Where the tests also save their screenshots (the README's are made with docs/console).
SCREENSHOTS_ENV = "CONSOLE_SCREENSHOTS_DIR"


@contextmanager
def chromium(*, accept_certificate: bool = False) -> Iterator[object]:
    """A headless Chromium WebDriver (the test is skipped when Chromium is not installed)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.access(binary, os.X_OK):
            pytest.skip(f"{binary} is not installed (run .ci/install-browser-deps.sh)")
    profile = tempfile.mkdtemp(prefix="ty-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    # Console messages (CSP violations, missing assets, script errors) for the tests to read.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if accept_certificate:
        # The registry's certificate is the test's own self-signed one.
        options.add_argument("--ignore-certificate-errors")
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: object, folder: Path, name: str) -> Path:
    """Save the whole page (beyond the window) as `<name>.png` in `folder`, and in
    $CONSOLE_SCREENSHOTS_DIR when set (the README's pictures are made so)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": size["height"], "scale": 1},
        },
    )
    path = folder / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no screenshot of {name}"
    extra = os.environ.get(SCREENSHOTS_ENV)
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path
