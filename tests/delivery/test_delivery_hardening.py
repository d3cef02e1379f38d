"""Regression tests for the delivery review findings 1, 2, 5, 6, 9, 11 and 13.

Each scenario runs the engine against the emulator over loopback (faults injected
through ``/_emulator/faults``), except the short-count answer of finding 13, which
the emulator cannot give: there a transport-level stand-in answers for Graph.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from typing import Any

import httpx
import orjson
import pytest
from delivery_data import (
    PIXEL,
    TOKEN,
    EngineFactory,
    TimedTransport,
    add_faults,
    change_token,
    clear_faults,
    delivered_ids,
    ids,
    make_settings,
    metric,
    new_event,
    queue_events,
    wire_event,
)

from capirelay.clock import ManualClock
from capirelay.delivery import BreakerState, DeliveryEngine
from capirelay.delivery.worker import PixelWorker
from capirelay.emulator.testing import RunningEmulator
from capirelay.graph import GraphClient
from capirelay.metrics import Metrics
from capirelay.outbox import Outbox
from capirelay.retry import RetryPolicy
from waiting import wait_for_async

FBC = "fb.1.1700000000000.IwAR0aBcDeF"


async def _stored_events(emulator: RunningEmulator) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=emulator.url) as client:
        response = await client.get(f"/_emulator/pixels/{PIXEL}/events")
        response.raise_for_status()
    return [entry["event"] for entry in response.json()["data"]]


# ---------------------------------------------------------------- 1: throttling


@pytest.mark.parametrize("code", [4, 80004])
async def test_a_zero_wait_estimate_still_backs_off(
    start_engine: EngineFactory, outbox: Outbox, emulator: RunningEmulator, code: int
) -> None:
    # Meta says "0 minutes to regain access" while it keeps refusing: that is no estimate.
    await add_faults(emulator, {"kind": "throttle", "code": code, "count": 3, "regain_minutes": 0})
    transport = TimedTransport()
    engine = await start_engine(backoff_base=0.2, backoff_max=5.0, transport=transport)
    await queue_events(outbox, [new_event(wire_event(i)) for i in ids("thr0", 3)])
    engine.notify(PIXEL)
    assert await engine.drain(timeout=10)
    assert sorted(await delivered_ids(emulator)) == ids("thr0", 3)
    # Three throttles, then the send: each pause at least the escalating 0.2, 0.4, 0.8 s
    # (a slow machine only lengthens the gaps; without backoff they would be ~one poll).
    assert len(transport.started) == 4
    gaps = [b - a for a, b in itertools.pairwise(transport.started)]
    assert all(gap >= pause for gap, pause in zip(gaps, (0.2, 0.4, 0.8), strict=True)), gaps


# ------------------------------------------------------------------ 2: leases


async def test_a_bisection_longer_than_the_lease_sends_no_event_twice(
    start_engine: EngineFactory, outbox: Outbox, emulator: RunningEmulator
) -> None:
    await add_faults(emulator, {"kind": "latency", "latency_ms": 100})
    wanted = ids("lease", 64)
    bad = {wanted[i] for i in (5, 21, 38, 60)}
    await queue_events(outbox, [new_event(wire_event(i, valid=i not in bad)) for i in wanted])
    # ~50 requests of 100 ms to isolate 4 bad events: far longer than one 1.6 s lease.
    engine = await start_engine(lease_seconds=1.6)
    engine.notify(PIXEL)
    assert await engine.drain(timeout=30)
    assert emulator.state.stats()["duplicates"] == 0
    assert sorted(await delivered_ids(emulator)) == sorted(set(wanted) - bad)
    assert {letter.event_id for letter in await outbox.dlq_list(limit=100)} == bad


async def test_no_request_outlives_the_lease(
    start_engine: EngineFactory, outbox: Outbox, emulator: RunningEmulator
) -> None:
    # Graph hangs; the HTTP client alone would wait its 5 s timeout, past the 2 s lease.
    await add_faults(emulator, {"kind": "timeout", "seconds": 10, "count": 1})
    engine = await start_engine(lease_seconds=2.0, request_timeout=5.0)
    await queue_events(outbox, [new_event(wire_event("hung"))])
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).retried == 1, timeout=5)
    # Cut by the worker at the lease budget, not by the HTTP client's 5 s timeout.
    last_error = engine.pixel_status(PIXEL).last_error
    assert last_error is not None and "before the lease ends" in last_error.message
    assert await engine.drain(timeout=5)
    assert await delivered_ids(emulator) == ["hung"]
    assert emulator.state.stats()["duplicates"] == 0


# ------------------------------------------------- 5: expired events and probes


async def test_expired_events_do_not_delay_breaker_recovery(
    start_engine: EngineFactory, outbox: Outbox, emulator: RunningEmulator
) -> None:
    await change_token(emulator, "revoke", TOKEN)
    clock = ManualClock()
    now = clock.time()
    expiring = [new_event(wire_event(i), deadline_at=now + 0.5) for i in ids("old", 40)]
    live = ids("live", 3)
    await queue_events(outbox, expiring + [new_event(wire_event(i)) for i in live], now=now)
    engine = await start_engine(breaker_probe_seconds=0.6, clock=clock)
    engine.notify(PIXEL)

    def settled_open() -> bool:  # the refused batch is released and its hold recorded
        status = engine.pixel_status(PIXEL)
        return status.breaker is BreakerState.OPEN and status.in_flight == 0

    await wait_for_async(settled_open)
    refused = engine.pixel_status(PIXEL).failed_requests  # the first batch, all 43 events

    # The 40 events pass their deadline while the token is bad, and one probe interval
    # passes: the four probe batches of expired events must not cost four intervals.
    clock.advance(1.0)

    async def all_expired() -> bool:
        return (await outbox.stats(now=clock.time())).dlq_size == 40

    await wait_for_async(all_expired, timeout=10)
    # Right after them the live events go out as the probe, still with the revoked
    # token: wait until that refusal is settled, so it cannot land after the restore
    # (and re-open the breaker for an interval the manual clock would never reach).
    await wait_for_async(
        lambda: engine.pixel_status(PIXEL).failed_requests > refused and settled_open()
    )
    await change_token(emulator, "restore", TOKEN)
    clock.advance(0.6)  # at most one more probe interval
    await wait_for_async(lambda: engine.pixel_status(PIXEL).breaker is BreakerState.CLOSED)
    assert await engine.drain(timeout=5)
    assert sorted(await delivered_ids(emulator)) == live
    letters = await outbox.dlq_list(limit=100)
    assert len(letters) == 40 and {letter.reason for letter in letters} == {"expired"}


# --------------------------------------------------------------- 6: bisection


async def test_a_passing_request_level_refusal_dead_letters_nothing(
    start_engine: EngineFactory, outbox: Outbox, emulator: RunningEmulator
) -> None:
    # One generic code-100 refusal of the whole request, naming no event: the pixel is
    # held (breaker) and probed, the events stay queued.
    await add_faults(
        emulator, {"kind": "graph_error", "code": 100, "message": "Invalid parameter", "count": 1}
    )
    wanted = ids("good", 8)
    await queue_events(outbox, [new_event(wire_event(i)) for i in wanted])
    engine = await start_engine(breaker_probe_seconds=0.3)
    engine.notify(PIXEL)
    assert await engine.drain(timeout=10)
    assert sorted(await delivered_ids(emulator)) == wanted
    assert await outbox.dlq_list() == []


async def test_every_event_refused_alike_is_a_setup_problem_not_bad_data(
    start_engine: EngineFactory, outbox: Outbox, emulator: RunningEmulator
) -> None:
    await add_faults(
        emulator,
        {"kind": "graph_error", "code": 100, "message": "Invalid parameter", "duration": 30},
    )
    wanted = ids("cfg", 8)
    await queue_events(outbox, [new_event(wire_event(i)) for i in wanted])
    engine = await start_engine(breaker_probe_seconds=0.3)
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).breaker is BreakerState.OPEN)
    stats = await outbox.stats(now=time.time())
    assert (stats.depth, stats.dlq_size) == (8, 0)

    await clear_faults(emulator)
    assert await engine.drain(timeout=10)
    assert sorted(await delivered_ids(emulator)) == wanted
    assert await outbox.dlq_list() == []


@pytest.mark.parametrize("code", [9999, 11])
async def test_an_unknown_error_holds_the_pixel_and_dead_letters_nothing(
    start_engine: EngineFactory, outbox: Outbox, emulator: RunningEmulator, code: int
) -> None:
    # An error naming no event is no evidence against the events: no bisection.
    await add_faults(
        emulator,
        {"kind": "graph_error", "code": code, "status": 400, "message": "?", "duration": 30},
    )
    wanted = ids(f"unknown{code}", 40)
    await queue_events(outbox, [new_event(wire_event(i)) for i in wanted])
    engine = await start_engine(breaker_probe_seconds=0.3)
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).breaker is BreakerState.OPEN)
    status = engine.pixel_status(PIXEL)
    assert status.last_error is not None and status.last_error.retry_class == "unknown"
    assert status.bisect_requests == 0
    stats = await outbox.stats(now=time.time())
    assert (stats.depth, stats.dlq_size) == (40, 0)

    await clear_faults(emulator)
    assert await engine.drain(timeout=10)
    assert sorted(await delivered_ids(emulator)) == sorted(wanted)
    assert await outbox.dlq_list() == []


# ----------------------------------------------------------------- 11: fbc


def _with_fbc(event_id: str) -> dict[str, Any]:
    payload = wire_event(event_id)
    payload["user_data"]["fbc"] = FBC
    return payload


async def test_a_malformed_fbc_is_dropped_and_the_event_sent_again(
    start_engine: EngineFactory,
    outbox: Outbox,
    emulator: RunningEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="capirelay")
    await add_faults(
        emulator, {"kind": "invalid_event", "event_id": "fbc", "subcode": 2804001, "count": 1}
    )
    await queue_events(outbox, [new_event(_with_fbc("fbc"))])
    engine = await start_engine()
    engine.notify(PIXEL)
    assert await engine.drain(timeout=10)
    [stored] = await _stored_events(emulator)
    assert stored["event_id"] == "fbc"
    assert "fbc" not in stored["user_data"]
    assert stored["user_data"]["fbp"]  # only the click id went
    assert await outbox.dlq_list() == []
    assert any("delivered without fbc" in r.getMessage() for r in caplog.records)
    assert FBC not in caplog.text


async def test_a_malformed_fbc_refused_again_is_dead_lettered_once(
    start_engine: EngineFactory, outbox: Outbox, emulator: RunningEmulator
) -> None:
    await add_faults(
        emulator, {"kind": "invalid_event", "event_id": "fbc2", "subcode": 2804001, "count": 2}
    )
    await queue_events(outbox, [new_event(_with_fbc("fbc2"))])
    engine = await start_engine()
    engine.notify(PIXEL)
    assert await engine.drain(timeout=10)
    [letter] = await outbox.dlq_list()
    assert letter.error is not None
    assert (letter.error["code"], letter.error["subcode"]) == (100, 2804001)
    assert "without user_data.fbc" in letter.error["message"]
    assert emulator.state.stats()["requests"] == 2  # the original and one resend


# ----------------------------------------------------- 9: probe vs stale batch


async def test_a_successful_probe_closes_a_breaker_reopened_meanwhile(
    outbox: Outbox, emulator: RunningEmulator, token_env: pytest.MonkeyPatch
) -> None:
    await add_faults(emulator, {"kind": "latency", "latency_ms": 300})
    await queue_events(outbox, [new_event(wire_event("probe"))])
    settings = make_settings(emulator.url, breaker_probe_seconds=60.0)
    clock = ManualClock()
    async with GraphClient(base_url=emulator.url) as client:
        worker = PixelWorker(
            PIXEL,
            outbox=outbox,
            settings=settings,
            metrics=Metrics(),
            client_for=lambda _pixel: client,
            clock=clock,
            retry_policy=RetryPolicy(base=0.05, max_delay=0.2),
            rng=random.Random(7),
        )
        # Opened a while ago; its probe is due now.
        worker.breaker.trip(clock.monotonic() - 120.0, wall_time=clock.time() - 1.0)
        await worker._lease_and_dispatch()
        assert worker.breaker.state is BreakerState.HALF_OPEN
        # An older batch fails with the old token while the probe is in flight.
        clock.advance(0.5)
        worker.breaker.trip(clock.monotonic(), wall_time=clock.time())
        await asyncio.gather(*list(worker._in_flight))
        assert worker.breaker.state is BreakerState.CLOSED
    assert await delivered_ids(emulator) == ["probe"]


# ------------------------------------------------- 13: short events_received


async def test_fewer_events_received_than_sent_is_counted_and_logged(
    outbox: Outbox, token_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def graph(request: httpx.Request) -> httpx.Response:
        sent = orjson.loads(request.content)["data"]
        body = {"events_received": len(sent) - 1, "messages": [], "fbtrace_id": "Short1"}
        return httpx.Response(200, json=body)

    caplog.set_level(logging.INFO, logger="capirelay")
    await queue_events(outbox, [new_event(wire_event(i)) for i in ids("short", 5)])
    engine = DeliveryEngine(
        outbox,
        make_settings("http://graph.invalid"),
        Metrics(),
        transport=httpx.MockTransport(graph),
    )
    await engine.start()
    try:
        assert await engine.drain(timeout=10)
    finally:
        await engine.stop(timeout=2.0)
    unconfirmed = metric(engine.metrics, "capirelay_events_unconfirmed_total", {"pixel": PIXEL})
    assert unconfirmed == 1
    [warned] = [r for r in caplog.records if "Meta counted 4 of 5" in r.getMessage()]
    assert warned.levelno == logging.WARNING and "Short1" in warned.getMessage()
