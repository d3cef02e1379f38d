"""The vendors' own documented sample payloads (``tests/fixtures/vendors``, see SOURCES.md there):
Shopify's webhook sample order, WooCommerce's REST v3 order 727, Stripe's stripe-mock fixtures.
Tests patch status and time fields only."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

VENDORS_DIR = Path(__file__).resolve().parent / "fixtures" / "vendors"


@cache
def _load(name: str) -> Any:
    return json.loads((VENDORS_DIR / name).read_text(encoding="utf-8"))


def vendor_fixture(name: str) -> Any:
    """A fresh copy of one fixture file's JSON (callers may patch it)."""
    return copy.deepcopy(_load(name))
