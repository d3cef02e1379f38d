"""Two delivery engines (replicas) on one PostgreSQL outbox meet a revoked token.

Without shared state each replica would find out on its own and then probe on its
own schedule: N replicas, N probes per interval.  With the shared hold, one failed
batch stops every replica, one probe per interval goes out for the whole fleet,
and the first accepted batch (after the token is restored) resumes them all.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager

import orjson
import pytest

from capirelay.config import DeliverySettings, PixelSettings, Secret, Settings
from capirelay.delivery import DeliveryEngine
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.metrics import Metrics
from capirelay.outbox import NewEvent, Outbox
from capirelay.outbox.postgres import PostgresOutbox

PIXEL = "1234567890"
TOKEN = "EAAsharedbreakertoken000001"
TOKEN_ENV = "CAPIRELAY_TEST_SHARED_BREAKER_TOKEN"
PROBE_SECONDS = 0.3
WINDOW_SECONDS = 3.0
EVENTS = 300
SchemaFactory = Callable[[], AbstractContextManager[str]]  # tests/conftest.py: pg_schema


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    async with run_emulator(pixels={PIXEL: TOKEN}) as running:
        yield running


def settings(graph_url: str) -> Settings:
    return Settings(
        graph_url=graph_url,
        pixels={PIXEL: PixelSettings(access_token=Secret(env=TOKEN_ENV))},
        delivery=DeliverySettings(
            batch_size=50,
            linger_ms=0,
            poll_seconds=0.05,
            backoff_base=0.05,
            backoff_max=0.2,
            breaker_probe_seconds=PROBE_SECONDS,
            request_timeout=2.0,
        ),
    )


def purchase(n: int) -> NewEvent:
    now = int(time.time())
    payload = {
        "event_name": "Purchase",
        "event_time": now - 10,
        "event_id": f"shared-{n}",
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {"em": ["a" * 64], "client_user_agent": "Mozilla/5.0"},
        "custom_data": {"currency": "USD", "value": 1.0},
    }
    return NewEvent(PIXEL, "Purchase", f"shared-{n}", orjson.dumps(payload), now - 10, now + 3600)


async def run_fleet(emulator: RunningEmulator, storage_url: str) -> tuple[int, list[bool]]:
    """Two engines, the token revoked for WINDOW_SECONDS, then restored: the requests Meta
    refused, and whether each engine drained afterwards."""
    emulator.state.reset()
    emulator.state.revoke_token(TOKEN)
    outboxes = [PostgresOutbox(storage_url, pool_size=4) for _ in range(2)]
    engines = [DeliveryEngine(box, settings(emulator.url), Metrics()) for box in outboxes]
    for box in outboxes:
        await box.open()
    try:
        await outboxes[0].enqueue([purchase(n) for n in range(EVENTS)], now=time.time())
        for engine in engines:
            await engine.start()
            engine.notify(PIXEL)
        await asyncio.sleep(WINDOW_SECONDS)
        refused = int(emulator.state.stats()["requests"])
        emulator.state.restore_token(TOKEN)
        drained = await asyncio.gather(*(engine.drain(timeout=20) for engine in engines))
    finally:
        for engine in engines:
            await engine.stop(timeout=2)
        for box in outboxes:
            await box.close()
    delivered = Counter(e["event"]["event_id"] for e in emulator.state.events(PIXEL))
    assert len(delivered) == EVENTS
    assert set(delivered.values()) == {1}
    return refused, list(drained)


async def test_a_revoked_token_is_probed_once_per_interval_for_the_whole_fleet(
    emulator: RunningEmulator,
    pg_schema: SchemaFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with pg_schema() as url:
        shared, shared_drained = await run_fleet(emulator, url)
    # The same fleet with the hold switched off: each replica on its own breaker.
    monkeypatch.setattr(PostgresOutbox, "hold_pixel", Outbox.hold_pixel)
    with pg_schema() as url:
        alone, alone_drained = await run_fleet(emulator, url)
    print(f"\nrevoked token for {WINDOW_SECONDS} s, 2 replicas: {shared} requests with the")
    print(f"shared hold, {alone} with each replica on its own breaker")
    assert shared_drained == alone_drained == [True, True]
    # On its own each replica probes every interval: about 2 x (1 + intervals) requests.
    # Shared: each replica's first batch (they start together), then one probe per interval
    # for the fleet, so about half.
    assert shared <= 0.75 * alone
