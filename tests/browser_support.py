"""Headless Chromium driven by selenium, for tests that look at the pages as a person would.

Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``;
``.ci/run`` installs them). Selenium's calls block: :class:`Browser` runs each in a thread,
so that the reactor (and the master under test, in the same process) keeps answering the
browser meanwhile. Screenshots go to ``$BUILDMASTER_TEST_SCREENSHOTS``, by default
``test-artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet import threads

from buildmaster.testing import wait_for

__all__ = ["Browser", "start_chromium", "CHROMIUM", "CHROMEDRIVER", "screenshot_dir"]

T = TypeVar("T")

CHROMIUM = os.environ.get("BUILDMASTER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BUILDMASTER_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")

#: without the networking flags, Chromium's own connections (updates, sync, QUIC probes)
#: are refused by a closed network, and slow every page down
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)


def screenshot_dir() -> Path:
    where = Path(os.environ.get("BUILDMASTER_TEST_SCREENSHOTS", "test-artifacts/screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    return where


def start_chromium() -> tuple[Any, str]:
    """A new headless Chromium with a fresh profile (blocking: call it outside the reactor's
    turns, e.g. in a fixture): its driver, and the profile's directory for
    :func:`quit_chromium`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="buildmaster-chromium-")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    return driver, profile


def quit_chromium(driver: Any, profile: str) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Browser:
    """The driver, each call in a thread; ``base_url`` is the master's."""

    def __init__(self, reactor: Any, driver: Any, base_url: str) -> None:
        self.reactor = reactor
        self.driver = driver
        self.base_url = base_url

    async def run(self, f: Callable[..., T], *args: Any) -> T:
        result: T = await threads.deferToThread(f, *args)
        return result

    async def open(self, path: str) -> None:
        await self.run(self.driver.get, self.base_url + path)

    async def text(self, css: str) -> str:
        return await self.run(lambda: self.driver.find_element("css selector", css).text)

    async def texts(self, css: str) -> list[str]:
        return await self.run(
            lambda: [e.text for e in self.driver.find_elements("css selector", css)]
        )

    async def count(self, css: str) -> int:
        return await self.run(lambda: len(self.driver.find_elements("css selector", css)))

    async def click(self, css: str) -> None:
        await self.run(lambda: self.driver.find_element("css selector", css).click())

    async def follow(self, css: str) -> None:
        """Click a link or a form's button and wait for the page it leads to: a click
        returns before the browser has left the page, so what is read straight after
        it may be the old page or none."""
        from selenium.common.exceptions import WebDriverException

        await self.script("window.__left_behind = true")
        await self.click(css)

        async def arrived() -> bool:
            try:
                return bool(
                    await self.script(
                        "return window.__left_behind === undefined"
                        " && document.readyState === 'complete'"
                    )
                )
            except WebDriverException:
                return False  # between two pages

        await wait_for(self.reactor, arrived, 90, f"the page after clicking {css}")

    async def fill(self, css: str, value: str) -> None:
        def fill() -> None:
            element = self.driver.find_element("css selector", css)
            element.clear()
            element.send_keys(value)

        await self.run(fill)

    async def script(self, source: str) -> Any:
        return await self.run(self.driver.execute_script, source)

    async def path(self) -> str:
        url: str = await self.run(lambda: self.driver.current_url)
        return url[len(self.base_url) :] if url.startswith(self.base_url) else url

    async def screenshot(self, name: str) -> Path:
        target = screenshot_dir() / f"{name}.png"
        await self.run(self.driver.save_screenshot, str(target))
        return target

    async def console_errors(self) -> list[str]:
        entries = await self.run(self.driver.get_log, "browser")
        return [e["message"] for e in entries if e["level"] == "SEVERE"]

    async def wait_for_count(self, css: str, n: int, what: str) -> None:
        """Wait until ``n`` elements match ``css`` (a page still being parsed has fewer)."""

        async def there() -> bool:
            return await self.count(css) == n

        await wait_for(self.reactor, there, 90, what)

    async def wait_until(self, css: str, check: Callable[[str], bool], what: str) -> str:
        """Wait until the text of ``css`` passes ``check`` (a deadline only ends a hung
        test); the text."""
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )

        seen: list[str] = []

        async def there() -> bool:
            try:
                current = await self.text(css)
            except (NoSuchElementException, StaleElementReferenceException):
                return False  # not on the page (yet), or the page changed under it
            seen[:] = [current]
            return check(current)

        await wait_for(self.reactor, there, 90, what)
        return seen[0]
