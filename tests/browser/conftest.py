"""Browser contexts for tests/browser, on the suite's ``browser`` (Debian's headless
Chromium, launched once per module: ``tests/conftest.py``, ``tests/chromium.py``).

``context`` is a fresh browser context (no cookies, no storage) presenting a desktop
Chrome user agent, ``page`` a page in it.  Modules still mark themselves
``NEEDS_CHROMIUM`` and skip without Chromium.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from chromium import SHOPPER_UA


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    fresh = browser.new_context(user_agent=SHOPPER_UA)
    try:
        yield fresh
    finally:
        fresh.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
