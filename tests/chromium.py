"""Debian's Chromium for the browser tests: where it is, how it is started, and the
desktop shopper it presents.  Never a browser a test tool downloads.

The ``browser`` fixture (``tests/conftest.py``) launches it once per module; modules
that use it mark themselves with :data:`NEEDS_CHROMIUM`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Headless Chromium says "HeadlessChrome", which the gateway rightly drops as a bot; a
# shopper in these tests is a person, so their contexts present a desktop Chrome.
SHOPPER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
NEEDS_CHROMIUM = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed"),
]
