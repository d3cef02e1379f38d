"""Shared headless Chromium (Debian ``chromium``, never a downloaded browser) for tests/browser.

``browser`` is launched once per module; ``context`` is a fresh browser context
(no cookies, no storage) presenting a desktop Chrome user agent, ``page`` a page
in it.  Modules still mark themselves ``browser`` and skip without Chromium.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHOPPER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    # Headless Chromium says "HeadlessChrome", which the gateway rightly drops as a bot;
    # the shopper here is a person, so the context presents a desktop Chrome.
    fresh = browser.new_context(user_agent=SHOPPER_UA)
    try:
        yield fresh
    finally:
        fresh.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
