"""Headless Chromium for UI tests, driven through Selenium and Debian's own chromedriver.

Selenium with the distribution's chromedriver (built from the same Chromium release as
/usr/bin/chromium) needs no browser download: Playwright would want its own pinned build or
would drive a Chromium newer than it was tested with. Every wait is bounded and, on timeout, says
what it waited for and what the page showed instead. Single-page apps (the MLflow UI is React)
re-render under the driver, so lookups are retried on stale elements rather than failing once.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

CHROMIUM = Path(os.environ.get("MIXDISTILL_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("MIXDISTILL_CHROMEDRIVER", "/usr/bin/chromedriver"))
# Headless on a server without GPU or network: no sandbox (we run as root in containers), no GPU
# process, and none of the background fetches (updates, sync, QUIC probes) that would only time
# out offline and slow the first page load.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")
INSTALL_HINT = "apt-get install chromium chromium-driver; pip install 'selenium>=4.30,<5'"

T = TypeVar("T")


def unavailable_reason() -> str | None:
    """Why no browser test can run here, or None when Chromium, its driver and Selenium are there."""
    for path, what in ((CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")):
        if not (path.is_file() and os.access(path, os.X_OK)):
            return f"{what} not found at {path} ({INSTALL_HINT})"
    if importlib.util.find_spec("selenium") is None:
        return f"the selenium package is not installed ({INSTALL_HINT})"
    return None


def xpath_literal(text: str) -> str:
    """``text`` as an XPath string literal (XPath 1.0 has no escapes: mixed quotes need concat)."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    parts = text.split("'")
    return "concat(" + ", \"'\", ".join(f"'{p}'" for p in parts) + ")"


class BrowserTimeout(AssertionError):
    """A bounded wait ran out; the message names what was awaited and shows the page text."""


class Browser:
    """One headless Chromium with a throwaway profile; use as a context manager."""

    def __init__(self, width: int = 1920, height: int = 1080, page_load_timeout_s: float = 60.0,
                 default_timeout_s: float = 30.0):
        self.width, self.height = width, height
        self.page_load_timeout_s = page_load_timeout_s
        self.default_timeout_s = default_timeout_s
        self.driver = None
        self._profile: str | None = None

    def __enter__(self) -> "Browser":
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        # A fresh profile per browser: no cached UI state (column choices, dismissed panels) from
        # an earlier run can make a check pass or fail.
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--window-size={self.width},{self.height}")
        options.add_argument(f"--user-data-dir={self._profile}")
        try:
            # An explicit driver path keeps Selenium Manager from trying to download one.
            self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        except Exception:
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(self.page_load_timeout_s)
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self.driver is not None:
                self.driver.quit()
        finally:
            self.driver = None
            if self._profile:
                shutil.rmtree(self._profile, ignore_errors=True)

    # --- navigation and reading ------------------------------------------------------------

    def open(self, url: str) -> None:
        self.driver.get(url)

    def text(self) -> str:
        """The rendered text of the page (what a user can read, not the HTML)."""
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def screenshot(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"Chromium could not write a screenshot to {path}")
        return path

    # --- bounded waits --------------------------------------------------------------------------

    def wait(self, probe: Callable[[], T], what: str, timeout_s: float | None = None,
             interval_s: float = 0.25) -> T:
        """Poll ``probe`` until it returns something truthy; return that. Stale or missing elements
        during a re-render count as "not yet"."""
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

        timeout_s = self.default_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = probe()
                if value:
                    return value
            except (NoSuchElementException, StaleElementReferenceException):
                pass
            if time.monotonic() >= deadline:
                raise BrowserTimeout(f"{what}: not within {timeout_s:.0f} s at {self.driver.current_url}; "
                                     f"page text (tail):\n{self.text()[-2000:]}")
            time.sleep(interval_s)

    def wait_for_text(self, *texts: str, timeout_s: float | None = None) -> str:
        """Wait until every one of ``texts`` is in the rendered page text; return that text."""
        def probe():
            page = self.text()
            return page if all(t in page for t in texts) else None

        return self.wait(probe, f"text {list(texts)} on the page", timeout_s)

    def visible(self, xpath: str):
        """The first displayed element matching ``xpath``, or None."""
        from selenium.webdriver.common.by import By

        return next((e for e in self.driver.find_elements(By.XPATH, xpath) if e.is_displayed()), None)

    def wait_visible(self, xpath: str, what: str, timeout_s: float | None = None):
        return self.wait(lambda: self.visible(xpath), what, timeout_s)

    def click(self, xpath: str, what: str, timeout_s: float | None = None) -> None:
        """Click the first displayed match, retrying while a re-render swaps the element out."""
        from selenium.common.exceptions import (ElementClickInterceptedException, ElementNotInteractableException,
                                                StaleElementReferenceException)

        def attempt():
            element = self.visible(xpath)
            if element is None:
                return False
            try:
                element.click()
            except (ElementClickInterceptedException, ElementNotInteractableException,
                    StaleElementReferenceException):
                return False
            return True

        self.wait(attempt, f"click on {what}", timeout_s)

    def click_text(self, text: str, what: str | None = None, within: str = "", timeout_s: float | None = None):
        """Click the displayed element whose own text is exactly ``text`` (optionally below the
        XPath ``within``); ``normalize-space(.)`` also matches text split by highlighting tags."""
        xpath = f"{within}//*[normalize-space(.)={xpath_literal(text)}][not(*[normalize-space(.)=" \
                f"{xpath_literal(text)}])]"
        self.click(xpath, what or repr(text), timeout_s)

    def press_escape(self) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        self.driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)

    def scroll_into_view(self, element) -> None:
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'nearest', inline: 'center'})", element)
