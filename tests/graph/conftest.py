"""Fixtures for the Graph client tests: a live emulator on a loopback port, valid events."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from capirelay.emulator import RunningEmulator, run_emulator

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


@pytest.fixture
def event_factory() -> Callable[..., dict[str, Any]]:
    return make_event


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL: TOKEN, OTHER_PIXEL: OTHER_TOKEN}, fault_seed=7) as running:
        yield running


@pytest.fixture
def http(emulator: RunningEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, timeout=5.0) as client:
        yield client
