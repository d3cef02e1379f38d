"""Shared pieces of the Meta diagnostics tests: settings, a delivery engine, wire events."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from capirelay.config import (
    DeliverySettings,
    DiagnosticsSettings,
    PixelSettings,
    Secret,
    Settings,
)
from capirelay.metrics import Metrics
from capirelay.outbox import NewEvent, Outbox
from waiting import wait_for_async

PIXEL = "1234567890"
TOKEN = "EAAtesttokenforthepixel0123456789"
EMAIL_HASH = hashlib.sha256(b"someone@example.com").hexdigest()
HOUR = 3600


def make_settings(graph_url: str, **diagnostics: Any) -> Settings:
    return Settings(
        graph_url=graph_url,
        pixels={PIXEL: PixelSettings(access_token=Secret(value=TOKEN))},
        delivery=DeliverySettings(linger_ms=0, poll_seconds=0.05, request_timeout=2.0),
        diagnostics=DiagnosticsSettings(**{"enabled": False, "min_events": 5, **diagnostics}),
    )


def wire_event(event_id: str, event_time: int, event_name: str = "Purchase") -> dict[str, Any]:
    return {
        "event_name": event_name,
        "event_time": event_time,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "em": [EMAIL_HASH],
            "client_user_agent": "Mozilla/5.0",
            "client_ip_address": "203.0.113.5",
        },
        "custom_data": {"currency": "USD", "value": 10.0},
    }


async def queue(outbox: Outbox, prefix: str, count: int, *, at: float) -> None:
    events = [wire_event(f"{prefix}-{i}", int(at) - 30) for i in range(count)]
    await outbox.enqueue(
        [
            NewEvent(
                pixel_id=PIXEL,
                event_name=e["event_name"],
                event_id=e["event_id"],
                payload=orjson.dumps(e),
                event_time=e["event_time"],
                deadline=at + 7 * 24 * HOUR,
            )
            for e in events
        ],
        now=at,
    )


async def wait_sent(metrics: Metrics, count: int, timeout: float = 15.0) -> None:
    """Wait (polling the engine's counter, not sleeping blindly) until ``count`` events were
    sent and acknowledged (the counter moves after the acknowledgement is recorded)."""
    labels = {"pixel": PIXEL, "event_name": "Purchase"}
    await wait_for_async(
        lambda: (
            (metrics.registry.get_sample_value("capirelay_events_sent_total", labels) or 0) >= count
        ),
        timeout=timeout,
        what=f"{count} events sent",
    )
