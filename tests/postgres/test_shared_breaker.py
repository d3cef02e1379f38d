"""Two delivery engines (replicas) on one PostgreSQL outbox meet a revoked token.

Without shared state each replica would find out on its own and then probe on its
own schedule: N replicas, N probes per interval.  With the shared hold, one failed
batch stops every replica, one probe per interval goes out for the whole fleet,
and the first accepted batch (after the token is restored) resumes them all.

Time is one :class:`~capirelay.clock.ManualClock` shared by both engines, so nothing
here depends on how fast the machine is: while the clock stands still, a running hold
(``capirelay_pixel_state``, compared with the clock's time) lets no replica lease, so
the requests of each probe interval are final once the interval's probe has settled.
Every wait is for a positive signal: the hold row, the engines' breaker states and
request counters, and no leased row left in the outbox.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager

import orjson
import psycopg
import pytest
from tests.waiting import wait_for_async

from capirelay.clock import ManualClock
from capirelay.config import DeliverySettings, PixelSettings, Secret, Settings
from capirelay.delivery import DeliveryEngine
from capirelay.delivery.status import BreakerState
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.metrics import Metrics
from capirelay.outbox import NewEvent, Outbox
from capirelay.outbox.postgres import PostgresOutbox

PIXEL = "1234567890"
TOKEN = "EAAsharedbreakertoken000001"
TOKEN_ENV = "CAPIRELAY_TEST_SHARED_BREAKER_TOKEN"
PROBE_SECONDS = 30.0  # on the manual clock: never passes by itself
INTERVALS = 3
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


def purchase(n: int, now: float) -> NewEvent:
    at = int(now)
    payload = {
        "event_name": "Purchase",
        "event_time": at - 10,
        "event_id": f"shared-{n}",
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {"em": ["a" * 64], "client_user_agent": "Mozilla/5.0"},
        "custom_data": {"currency": "USD", "value": 1.0},
    }
    return NewEvent(PIXEL, "Purchase", f"shared-{n}", orjson.dumps(payload), at - 10, at + 3600)


class Fleet:
    """Two engines on one outbox schema and one manual clock, and what they show."""

    def __init__(self, emulator: RunningEmulator, storage_url: str) -> None:
        self.emulator = emulator
        self.url = storage_url
        self.clock = ManualClock()
        self.outboxes = [PostgresOutbox(storage_url, pool_size=4) for _ in range(2)]
        self.engines = [
            DeliveryEngine(box, settings(emulator.url), Metrics(), clock=self.clock)
            for box in self.outboxes
        ]

    def requests(self) -> int:
        return int(self.emulator.state.stats()["requests"])

    def sent_by(self) -> list[int]:
        return [engine.pixel_status(PIXEL).requests for engine in self.engines]

    def idle(self) -> bool:
        return all(e.pixel_status(PIXEL).in_flight == 0 for e in self.engines)

    def open(self, engine: DeliveryEngine) -> bool:
        return engine.pixel_status(PIXEL).breaker is BreakerState.OPEN

    async def hold(self) -> tuple[float, float] | None:
        """The shared breaker hold of the pixel: (hold_until, updated_at), or None."""
        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            cur = await conn.execute(
                "SELECT hold_until, updated_at FROM capirelay_pixel_state"
                " WHERE pixel_id = %s AND reason = 'breaker'",
                (PIXEL,),
            )
            row = await cur.fetchone()
        return (float(row[0]), float(row[1])) if row else None

    async def nothing_leased(self) -> bool:
        stats = await self.outboxes[0].stats(now=self.clock.time())
        return stats.leased == 0

    def notify(self) -> None:
        for engine in self.engines:
            engine.notify(PIXEL)


async def settled(fleet: Fleet, engines: list[DeliveryEngine]) -> bool:
    """Every given engine's breaker is open, nothing is in flight or leased."""
    if not all(fleet.open(e) for e in engines) or not fleet.idle():
        return False
    return await fleet.nothing_leased()


async def run_fleet(emulator: RunningEmulator, storage_url: str, *, shared: bool) -> list[int]:
    """The token revoked: engine A finds out, then B starts, then INTERVALS probe intervals
    pass on the clock; the requests Meta received in each interval.  Then the token is
    restored and both engines drain the queue."""
    emulator.state.reset()
    emulator.state.revoke_token(TOKEN)
    fleet = Fleet(emulator, storage_url)
    first, second = fleet.engines
    for box in fleet.outboxes:
        await box.open()
    try:
        await fleet.outboxes[0].enqueue(
            [purchase(n, fleet.clock.time()) for n in range(EVENTS)], now=fleet.clock.time()
        )
        # A discovers the revoked token on its own (its first batches, all refused).
        await first.start()
        first.notify(PIXEL)
        await wait_for_async(lambda: settled(fleet, [first]), what="engine A's breaker open")
        if shared:
            assert await fleet.hold() is not None
        # B starts afterwards: with the shared hold it leases nothing and so sends nothing;
        # on its own it sends its own first batches and opens its own breaker.
        await second.start()
        second.notify(PIXEL)
        if not shared:
            await wait_for_async(lambda: settled(fleet, [first, second]), what="B's breaker")
        per_interval: list[int] = []
        for _ in range(INTERVALS):
            before, sent_before = fleet.requests(), fleet.sent_by()
            fleet.clock.advance(PROBE_SECONDS)
            now = fleet.clock.time()
            fleet.notify()

            async def probed(now: float = now, sent_before: list[int] = sent_before) -> bool:
                sent = fleet.sent_by()
                if shared:
                    # The probe was handed out (the hold re-armed at this interval's time)
                    # and sent by one of the engines.
                    hold = await fleet.hold()
                    if hold is None or hold[1] != now or sum(sent) <= sum(sent_before):
                        return False
                elif not all(s > b for s, b in zip(sent, sent_before, strict=True)):
                    return False
                return await settled(fleet, [first] if shared else fleet.engines)

            await wait_for_async(probed, what="this interval's probe settled")
            per_interval.append(fleet.requests() - before)
        emulator.state.restore_token(TOKEN)
        fleet.clock.advance(PROBE_SECONDS)
        fleet.notify()
        for engine in fleet.engines:
            assert await engine.drain(timeout=20)
    finally:
        for engine in fleet.engines:
            await engine.stop(timeout=2)
        for box in fleet.outboxes:
            await box.close()
    delivered = Counter(e["event"]["event_id"] for e in emulator.state.events(PIXEL))
    assert len(delivered) == EVENTS
    assert set(delivered.values()) == {1}
    return per_interval


async def test_a_revoked_token_is_probed_once_per_interval_for_the_whole_fleet(
    emulator: RunningEmulator,
    pg_schema: SchemaFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with pg_schema() as url:
        shared = await run_fleet(emulator, url, shared=True)
    # The same fleet with the hold switched off: each replica on its own breaker.
    monkeypatch.setattr(PostgresOutbox, "hold_pixel", Outbox.hold_pixel)
    with pg_schema() as url:
        alone = await run_fleet(emulator, url, shared=False)
    print(f"\nrequests per probe interval, 2 replicas: {shared} with the shared hold,")
    print(f"{alone} with each replica on its own breaker")
    # Shared: one probe per interval for the whole fleet.  Alone: one per replica.
    assert shared == [1] * INTERVALS
    assert alone == [2] * INTERVALS
