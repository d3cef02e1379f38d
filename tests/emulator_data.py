"""The pixels, tokens and wire event the emulator and Graph client tests share.

Plain data, imported by the tests; the live ``emulator`` fixture that serves these
pixels is in ``tests/conftest.py``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

PIXEL = "1234567890"
TOKEN = "EAAtesttokenforthepixel0123456789"
OTHER_PIXEL = "5550001112"
OTHER_TOKEN = "EAAothertokenforotherpixel98765432"


def make_event(index: int = 0, **overrides: Any) -> dict[str, Any]:
    """A wire event Meta accepts: website Purchase with hashed email, IP and UA."""
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 60,
        "event_id": f"order-{index}",
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "user_data": {
            "em": [hashlib.sha256(f"buyer{index}@example.com".encode()).hexdigest()],
            "client_ip_address": "203.0.113.7",
            "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        },
        "custom_data": {"value": 19.99, "currency": "usd"},
    }
    event.update(overrides)
    return event
