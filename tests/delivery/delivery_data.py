"""Wire events the emulator accepts, queueing them like ingest does, and emulator controls."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from capirelay.config import DeliverySettings, PixelSettings, Secret, Settings
from capirelay.emulator.testing import RunningEmulator
from capirelay.metrics import Metrics
from capirelay.outbox import NewEvent, Outbox
from capirelay.validate import deadline

if TYPE_CHECKING:
    from capirelay.delivery import DeliveryEngine

PIXEL = "1234567890"
TOKEN = "EAAtesttoken0000000000000001"
ROTATED_TOKEN = "EAAtesttoken0000000000000002"
TOKEN_ENV = "CAPIRELAY_TEST_DELIVERY_TOKEN"
EngineFactory = Callable[..., Awaitable["DeliveryEngine"]]
EMAIL_HASH = hashlib.sha256(b"someone@example.com").hexdigest()


def wire_event(
    event_id: str, *, event_time: int | None = None, valid: bool = True
) -> dict[str, Any]:
    """A hashed website Purchase; ``valid=False`` drops value and currency (Meta: 100/2804009)."""
    return {
        "event_name": "Purchase",
        "event_time": event_time if event_time is not None else int(time.time()) - 60,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "em": [EMAIL_HASH],
            "client_user_agent": "Mozilla/5.0",
            "client_ip_address": "203.0.113.5",
            "fbp": "fb.1.1700000000000.1234567890",
        },
        "custom_data": {"currency": "USD", "value": 10.0} if valid else {},
    }


def new_event(
    payload: dict[str, Any],
    *,
    pixel_id: str = PIXEL,
    test_event_code: str | None = None,
    deadline_at: float | None = None,
) -> NewEvent:
    return NewEvent(
        pixel_id=pixel_id,
        event_name=payload["event_name"],
        event_id=payload["event_id"],
        payload=orjson.dumps(payload),
        event_time=payload["event_time"],
        deadline=deadline(payload) if deadline_at is None else deadline_at,
        test_event_code=test_event_code,
    )


async def queue_events(outbox: Outbox, events: list[NewEvent], *, now: float | None = None) -> None:
    await outbox.enqueue(events, now=time.time() if now is None else now)


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(count)]


async def add_faults(emulator: RunningEmulator, *faults: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        response = await client.post("/_emulator/faults", json={"faults": list(faults)})
        response.raise_for_status()


async def clear_faults(emulator: RunningEmulator) -> None:
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        (await client.delete("/_emulator/faults")).raise_for_status()


async def change_token(emulator: RunningEmulator, action: str, token: str) -> None:
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        response = await client.post(f"/_emulator/tokens/{action}", json={"access_token": token})
        response.raise_for_status()


async def control(emulator: RunningEmulator, path: str, body: dict[str, Any]) -> None:
    """POST ``body`` to one of the emulator's ``/_emulator/...`` routes."""
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        (await client.post(path, json=body)).raise_for_status()


async def delivered_ids(emulator: RunningEmulator, **query: str) -> list[str]:
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        response = await client.get(f"/_emulator/pixels/{PIXEL}/events", params=query)
        response.raise_for_status()
    return [e["event"]["event_id"] for e in response.json()["data"]]


def metric(engine_metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    return engine_metrics.registry.get_sample_value(name, labels) or 0.0


FAST_DELIVERY: dict[str, Any] = {
    "linger_ms": 0,
    "poll_seconds": 0.05,
    "backoff_base": 0.05,
    "backoff_max": 0.2,
    "breaker_probe_seconds": 0.2,
    "request_timeout": 1.0,
    "lease_seconds": 30.0,
}


def make_settings(graph_url: str, **delivery: Any) -> Settings:
    return Settings(
        graph_url=graph_url,
        pixels={PIXEL: PixelSettings(access_token=Secret(env=TOKEN_ENV))},
        delivery=DeliverySettings(**{**FAST_DELIVERY, **delivery}),
    )


class TimedTransport(httpx.AsyncHTTPTransport):
    """The real HTTP transport, noting when each request to Graph started (loop time) and
    calling ``on_request`` first (to read the engine's state as each request leaves)."""

    def __init__(self, on_request: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.started: list[float] = []
        self.on_request = on_request

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.started.append(asyncio.get_running_loop().time())
        if self.on_request is not None:
            self.on_request()
        return await super().handle_async_request(request)
