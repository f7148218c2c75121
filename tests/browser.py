"""A real headless Chromium for the page tests (Debian ``chromium`` + ``chromium-driver``).

Selenium drives the system's browser and driver by path, so Selenium Manager never runs and
nothing is downloaded. Each session gets a fresh profile; the flags keep Chromium off the
network (no background fetches, updates, sync or QUIC).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("EDGEVEIL_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("EDGEVEIL_CHROMEDRIVER", "/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[1]

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,900")


def missing() -> str | None:
    """Why the browser cannot start here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file():
            return f"{path} not found (apt-get install chromium chromium-driver, or make setup)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e .[dev])"
    return None


class Browser:
    """One headless Chromium session with a throw-away profile."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="edgeveil-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def get(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def displayed(self, css: str) -> bool:
        """Whether the element is visible to a person (WebDriver's own rule: collapsed
        ``<details>`` content, ``display: none`` … are not)."""
        from selenium.webdriver.common.by import By

        return bool(self.driver.find_element(By.CSS_SELECTOR, css).is_displayed())

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll ``check()`` every 0.2 s until it returns something truthy."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"{what}: not seen in {timeout:.0f} s (last: {last!r})")

    def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        """A PNG of the viewport, or of the whole page (the window grows to fit it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if full_page:
            height = int(self.js("return document.documentElement.scrollHeight"))
            self.driver.set_window_size(1400, max(900, min(height + 40, 6000)))
        self.driver.save_screenshot(str(path))
        if full_page:
            self.driver.set_window_size(1400, 900)
        return path

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


def artifacts_dir() -> Path:
    """Where screenshots go: ``$EDGEVEIL_TEST_ARTIFACTS`` or ``out/test-artifacts``."""
    path = Path(os.environ.get("EDGEVEIL_TEST_ARTIFACTS", ROOT / "out" / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
