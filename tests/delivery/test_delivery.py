"""The delivery engine against the emulator over loopback: no mocks of Graph anywhere."""

from __future__ import annotations

import logging
import math
import socket
import time

import pytest
from delivery_data import (
    EMAIL_HASH,
    PIXEL,
    ROTATED_TOKEN,
    TOKEN,
    TOKEN_ENV,
    EngineFactory,
    TimedTransport,
    add_faults,
    change_token,
    clear_faults,
    control,
    delivered_ids,
    ids,
    make_settings,
    metric,
    new_event,
    queue_events,
    wire_event,
)

from capirelay.clock import ManualClock
from capirelay.config import PixelSettings, Secret
from capirelay.delivery import BreakerState, DeliveryEngine
from capirelay.emulator.testing import RunningEmulator
from capirelay.graph import RetryClass
from capirelay.metrics import Metrics
from capirelay.outbox import SQLiteOutbox
from waiting import wait_for_async


async def test_events_go_out_in_one_batch(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    engine = await start_engine()
    wanted = ids("ok", 250)
    await queue_events(outbox, [new_event(wire_event(i)) for i in wanted])
    engine.notify(PIXEL)
    assert await engine.drain(timeout=10)
    assert sorted(await delivered_ids(emulator)) == wanted
    assert emulator.state.stats()["requests"] == 1
    status = engine.pixel_status(PIXEL)
    assert (status.sent, status.requests, status.breaker) == (250, 1, BreakerState.CLOSED)
    sent = metric(
        engine.metrics, "capirelay_events_sent_total", {"pixel": PIXEL, "event_name": "Purchase"}
    )
    assert sent == 250
    assert (await outbox.stats(now=time.time())).depth == 0


async def test_requests_are_grouped_by_test_event_code(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    engine = await start_engine()
    live, test = ids("live", 5), ids("test", 3)
    await queue_events(
        outbox,
        [new_event(wire_event(i)) for i in live]
        + [new_event(wire_event(i), test_event_code="TEST123") for i in test],
    )
    engine.notify(PIXEL)
    assert await engine.drain(timeout=10)
    assert sorted(await delivered_ids(emulator, test_event_code="TEST123")) == test
    assert len(await delivered_ids(emulator)) == 8
    assert emulator.state.stats()["requests"] == 2


async def test_meta_outage_loses_nothing(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    await add_faults(
        emulator,
        {"kind": "http_error", "status": 503, "duration": 0.6},
        {"kind": "timeout", "seconds": 1.5, "count": 2},
    )
    engine = await start_engine(batch_size=50, request_timeout=0.3)
    wanted = ids("outage", 400)
    for chunk in range(0, 400, 100):
        await queue_events(outbox, [new_event(wire_event(i)) for i in wanted[chunk : chunk + 100]])
        engine.notify(PIXEL)
    assert await engine.drain(timeout=20)
    assert sorted(set(await delivered_ids(emulator))) == wanted
    status = engine.pixel_status(PIXEL)
    assert status.failed_requests >= 1 and status.retried >= 50
    assert status.dead_lettered == 0
    assert await outbox.dlq_list() == []
    retried = metric(
        engine.metrics,
        "capirelay_events_retried_total",
        {"pixel": PIXEL, "retry_class": "transient"},
    )
    assert retried == status.retried


async def test_an_unreachable_graph_is_logged_with_its_address_and_what_to_check(
    outbox: SQLiteOutbox, token_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="capirelay")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    # A forwarding proxy's URL with a password and a path: neither reaches the log.
    graph_url = f"http://relay:pa55word@127.0.0.1:{closed}/meta"
    engine = DeliveryEngine(outbox, make_settings(graph_url), Metrics())
    await queue_events(outbox, [new_event(wire_event("unreachable"))])
    await engine.start()
    try:
        engine.notify(PIXEL)
        line = await wait_for_async(
            lambda: next(
                (r.getMessage() for r in caplog.records if "ConnectError" in r.getMessage()), None
            ),
            what="the log line of the failed connection",
        )
    finally:
        await engine.stop(timeout=2.0)
    assert line.startswith(f"pixel {PIXEL}: 1 event not delivered in "), line
    assert f"connection error (ConnectError) to http://127.0.0.1:{closed}" in line
    assert "check graph_url" in line and "proxy" in line, line
    assert "1 events" not in caplog.text
    for secret in (TOKEN, "pa55word", "relay:", "/meta"):
        assert secret not in caplog.text


def bisect_bound(batch: int, bad: int) -> float:
    return bad * 2 * math.log2(batch) + 2


@pytest.mark.parametrize("bad_count", [1, 2, 5, 10])
async def test_bad_events_are_isolated_by_bisection(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator, bad_count: int
) -> None:
    wanted = ids("bulk", 1000)
    # Spread the bad ones over the batch, the way real mistakes land.
    bad = {wanted[(i * 997 + 13) % 1000] for i in range(bad_count)}
    await add_faults(
        emulator, *({"kind": "invalid_event", "event_id": e, "subcode": 2804009} for e in bad)
    )
    await queue_events(outbox, [new_event(wire_event(i)) for i in wanted])
    engine = await start_engine()
    engine.notify(PIXEL)
    assert await engine.drain(timeout=20)

    assert sorted(await delivered_ids(emulator)) == sorted(set(wanted) - bad)
    dead = await outbox.dlq_list(limit=100)
    assert {d.event_id for d in dead} == bad
    for letter in dead:
        assert letter.reason == "invalid"
        assert letter.error is not None
        assert (letter.error["code"], letter.error["subcode"]) == (100, 2804009)
        assert letter.error["fbtrace_id"]
    bisect_requests = metric(engine.metrics, "capirelay_bisect_requests_total", {"pixel": PIXEL})
    print(f"\nbisection: {bad_count} bad in 1000 -> {bisect_requests:.0f} extra requests")
    assert bisect_requests <= bisect_bound(1000, bad_count)
    if bad_count == 1:
        assert bisect_requests <= 2 * math.log2(1000) + 2


async def test_a_lone_bad_event_is_not_retried(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    await queue_events(outbox, [new_event(wire_event("lonely", valid=False))])
    engine = await start_engine()
    engine.notify(PIXEL)
    assert await engine.drain(timeout=10)
    [dead] = await outbox.dlq_list()
    assert dead.error is not None and dead.error["code"] == 100
    assert emulator.state.stats()["requests"] == 1


async def test_revoked_token_opens_the_breaker_and_nothing_is_lost(
    start_engine: EngineFactory,
    outbox: SQLiteOutbox,
    emulator: RunningEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="capirelay")
    await change_token(emulator, "revoke", TOKEN)
    engine = await start_engine()
    wanted = ids("auth", 30)
    await queue_events(outbox, [new_event(wire_event(i)) for i in wanted])
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).breaker is BreakerState.OPEN)
    status = engine.pixel_status(PIXEL)
    assert status.last_error is not None and status.last_error.code == 190
    assert status.opened_at is not None
    assert metric(engine.metrics, "capirelay_breaker_open", {"pixel": PIXEL}) == 1
    # The first request and two failed probes: the breaker held, nothing went out.
    await wait_for_async(lambda: engine.pixel_status(PIXEL).failed_requests >= 3)
    stats = await outbox.stats(now=time.time())
    assert (stats.depth, stats.dlq_size) == (30, 0)
    assert await delivered_ids(emulator) == []

    await change_token(emulator, "restore", TOKEN)
    assert await engine.drain(timeout=10)
    assert sorted(await delivered_ids(emulator)) == wanted
    assert engine.pixel_status(PIXEL).breaker is BreakerState.CLOSED
    assert metric(engine.metrics, "capirelay_breaker_open", {"pixel": PIXEL}) == 0
    opened = [r for r in caplog.records if "circuit breaker OPEN" in r.getMessage()]
    assert len(opened) == 1 and opened[0].levelno == logging.ERROR  # once per state change
    # It says where the new token goes, and that a variable needs a restart.
    assert f"set the environment variable {TOKEN_ENV}" in opened[0].getMessage()
    assert "restart the gateway" in opened[0].getMessage()
    assert TOKEN not in caplog.text and EMAIL_HASH not in caplog.text


async def test_token_without_ads_management_holds_the_pixel_until_granted(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    """Meta's permission error (#200) is the token's problem, like a 190: the pixel is
    held with its events queued, none is dead-lettered, and granting the scope resumes it."""
    scopes = "/_emulator/tokens/scopes"
    await control(emulator, scopes, {"access_token": TOKEN, "scopes": ["ads_read"]})
    engine = await start_engine()
    wanted = ids("scope", 12)
    await queue_events(outbox, [new_event(wire_event(i)) for i in wanted])
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).breaker is BreakerState.OPEN)
    status = engine.pixel_status(PIXEL)
    assert status.last_error is not None
    assert (status.last_error.code, status.last_error.status) == (200, 403)
    assert status.last_error.retry_class == RetryClass.AUTH
    assert status.last_error.fbtrace_id  # Graph's error body, trace id included
    stats = await outbox.stats(now=time.time())
    assert (stats.depth, stats.dlq_size) == (12, 0)
    assert await delivered_ids(emulator) == []

    await control(emulator, scopes, {"access_token": TOKEN, "scopes": ["ads_management"]})
    assert await engine.drain(timeout=10)
    assert sorted(await delivered_ids(emulator)) == wanted
    assert engine.pixel_status(PIXEL).breaker is BreakerState.CLOSED


async def test_rotated_token_is_picked_up_without_restart(
    start_engine: EngineFactory,
    outbox: SQLiteOutbox,
    emulator: RunningEmulator,
    token_env: pytest.MonkeyPatch,
) -> None:
    await change_token(emulator, "revoke", TOKEN)
    engine = await start_engine()
    await queue_events(outbox, [new_event(wire_event(i)) for i in ids("rot", 10)])
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).breaker is BreakerState.OPEN)

    emulator.state.register_pixel(PIXEL, ROTATED_TOKEN)
    token_env.setenv(TOKEN_ENV, ROTATED_TOKEN)
    assert await engine.drain(timeout=10)
    assert len(await delivered_ids(emulator)) == 10
    assert engine.pixel_status(PIXEL).breaker is BreakerState.CLOSED


async def test_unknown_pixel_opens_the_breaker_instead_of_dead_lettering(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    await add_faults(emulator, {"kind": "graph_error", "code": 100, "subcode": 33, "status": 400})
    engine = await start_engine()
    await queue_events(outbox, [new_event(wire_event(i)) for i in ids("cfg", 5)])
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).breaker is BreakerState.OPEN)
    assert (await outbox.stats(now=time.time())).dlq_size == 0
    await clear_faults(emulator)
    assert await engine.drain(timeout=10)
    assert len(await delivered_ids(emulator)) == 5


async def test_missing_token_keeps_events_queued_until_configured(
    start_engine: EngineFactory,
    outbox: SQLiteOutbox,
    emulator: RunningEmulator,
    token_env: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token_env.delenv(TOKEN_ENV)
    engine = await start_engine()
    await queue_events(outbox, [new_event(wire_event(i)) for i in ids("unc", 4)])
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).breaker is BreakerState.UNCONFIGURED)
    # The log says where the token should come from (it named only the config key).
    assert any(
        f"no access token (environment variable {TOKEN_ENV} is unset or empty)" in r.getMessage()
        for r in caplog.records
    )
    # No token can be read, so no request can leave: the events stay queued.
    assert (await outbox.stats(now=time.time())).depth == 4
    assert emulator.state.stats()["requests"] == 0
    token_env.setenv(TOKEN_ENV, TOKEN)
    assert await engine.drain(timeout=10)
    assert len(await delivered_ids(emulator)) == 4


async def test_throttling_lowers_concurrency_then_it_recovers(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    await add_faults(emulator, {"kind": "throttle", "code": 80004, "count": 3, "regain_minutes": 0})
    # The limit in force as each request leaves (no sampling that could miss the dip).
    limits: list[int] = []
    transport = TimedTransport()
    engine = await start_engine(batch_size=20, max_in_flight=4, transport=transport)
    transport.on_request = lambda: limits.append(engine.pixel_status(PIXEL).concurrency_limit)
    wanted = ids("thr", 800)
    await queue_events(outbox, [new_event(wire_event(i)) for i in wanted])
    engine.notify(PIXEL)
    assert await engine.drain(timeout=20)
    status = engine.pixel_status(PIXEL)
    assert status.throttles == 3
    assert min(limits) <= 2
    assert status.concurrency_limit == 4  # recovered, one step per window of successes
    assert sorted(set(await delivered_ids(emulator))) == wanted
    assert status.dead_lettered == 0
    # Throttling releases the events: no attempt is counted against them.
    assert (await outbox.stats(now=time.time())).dlq_size == 0


async def test_throttle_pause_honors_retry_after(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    await add_faults(
        emulator,
        {"kind": "throttle", "code": 17, "count": 1, "retry_after": 3, "regain_minutes": 0},
    )
    engine = await start_engine(backoff_max=5.0)  # the pause is capped by backoff_max
    await queue_events(outbox, [new_event(wire_event("paused"))])
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).throttles == 1)
    assert engine.pixel_status(PIXEL).paused_for_seconds > 0.5
    assert await delivered_ids(emulator) == []
    assert await engine.drain(timeout=10)
    assert await delivered_ids(emulator) == ["paused"]


async def test_past_deadline_is_dead_lettered_as_expired_without_a_request(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    now = time.time()
    await queue_events(outbox, [new_event(wire_event("stale"), deadline_at=now - 1)])
    engine = await start_engine()
    engine.notify(PIXEL)
    assert await engine.drain(timeout=10)
    [dead] = await outbox.dlq_list()
    assert (dead.event_id, dead.reason) == ("stale", "expired")
    assert emulator.state.stats()["requests"] == 0


async def test_retries_stop_at_the_deadline(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    """A fake clock a week ahead: the event is inside its deadline by only 3 s when Meta
    fails, so no retry fits (5 s margin) and it is dead-lettered "expired" with the error."""
    real_deadline = time.time() + 7 * 86400
    offset = 7 * 86400 - 3
    await add_faults(emulator, {"kind": "http_error", "status": 500})
    await queue_events(
        outbox, [new_event(wire_event("edge"), deadline_at=real_deadline)], now=time.time() + offset
    )
    engine = await start_engine(clock=ManualClock(wall=time.time() + offset))
    engine.notify(PIXEL)
    assert await engine.drain(timeout=10)
    [dead] = await outbox.dlq_list()
    assert dead.reason == "expired"
    assert dead.error is not None and dead.error["status"] == 500
    assert emulator.state.stats()["requests"] == 1


async def test_graceful_stop_finishes_in_flight_batches(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    await add_faults(emulator, {"kind": "latency", "latency_ms": 300, "count": 1})
    engine = await start_engine()
    await queue_events(outbox, [new_event(wire_event(i)) for i in ids("fin", 20)])
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).in_flight == 1)
    await engine.stop(timeout=5)
    assert not engine.running
    assert len(await delivered_ids(emulator)) == 20
    assert (await outbox.stats(now=time.time())).depth == 0


async def test_stop_releases_what_cannot_finish_in_time(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    await add_faults(emulator, {"kind": "latency", "latency_ms": 3000, "count": 1})
    engine = await start_engine(request_timeout=5.0)
    await queue_events(outbox, [new_event(wire_event(i)) for i in ids("rel", 20)])
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).in_flight == 1)
    await engine.stop(timeout=0.2)
    # Had stop waited for the 3 s request, the events would be delivered: they are queued.
    stats = await outbox.stats(now=time.time())
    assert (stats.depth, stats.leased) == (20, 0)
    # Released, not rescheduled: due again at once, no attempt counted.
    leased = await outbox.lease(PIXEL, limit=100, lease_seconds=1, now=time.time())
    assert len(leased) == 20 and all(e.attempts == 0 for e in leased)


async def test_gauges_reflect_the_queue(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    await change_token(emulator, "revoke", TOKEN)
    # Everything is queued before the engine starts, so its first lease (earliest
    # deadline first) sees the expired event too, whatever the machine's load.
    await queue_events(outbox, [new_event(wire_event(i)) for i in ids("g", 7)])
    await queue_events(outbox, [new_event(wire_event("old"), deadline_at=time.time() - 5)])
    engine = await start_engine()
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).breaker is BreakerState.OPEN)
    await engine.refresh_gauges()
    assert metric(engine.metrics, "capirelay_queue_depth", {"pixel": PIXEL}) == 7
    assert metric(engine.metrics, "capirelay_dlq_size", {"reason": "expired"}) == 1
    assert metric(engine.metrics, "capirelay_queue_min_seconds_to_deadline", {}) > 6 * 86400
    assert engine.status()[PIXEL].breaker is BreakerState.OPEN


async def test_linger_gathers_a_burst_into_one_request(
    start_engine: EngineFactory, outbox: SQLiteOutbox, emulator: RunningEmulator
) -> None:
    # The linger runs on the injected clock, so it lasts until the test moves the clock;
    # a poll that never times out leaves the notifications as the only way out of the idle
    # wait (a poll timeout would lease the first event alone, without lingering).
    clock = ManualClock()
    engine = await start_engine(linger_ms=300, poll_seconds=3600.0, clock=clock)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).waiting == "work")
    for burst in range(3):
        await queue_events(outbox, [new_event(wire_event(f"burst-{burst}"))], now=clock.time())
        engine.notify(PIXEL)
        await wait_for_async(lambda: engine.pixel_status(PIXEL).waiting == "linger")
    clock.advance(0.3)
    assert await engine.drain(timeout=5)
    assert len(await delivered_ids(emulator)) == 3
    assert emulator.state.stats()["requests"] == 1


async def test_one_pixels_breaker_does_not_hold_up_another(
    emulator: RunningEmulator, outbox: SQLiteOutbox, token_env: pytest.MonkeyPatch
) -> None:
    other_pixel, other_token = "9876543210", "EAAothertoken000000000000001"
    emulator.state.register_pixel(other_pixel, other_token)
    token_env.setenv("CAPIRELAY_TEST_OTHER_TOKEN", other_token)
    await change_token(emulator, "revoke", TOKEN)
    settings = make_settings(emulator.url)
    settings.pixels[other_pixel] = PixelSettings(
        access_token=Secret(env="CAPIRELAY_TEST_OTHER_TOKEN")
    )
    engine = DeliveryEngine(outbox, settings, Metrics())
    await engine.start()
    try:
        await queue_events(
            outbox,
            [new_event(wire_event(i)) for i in ids("blocked", 5)]
            + [new_event(wire_event(i), pixel_id=other_pixel) for i in ids("free", 5)],
        )
        engine.notify(PIXEL)
        engine.notify(other_pixel)
        await wait_for_async(lambda: engine.pixel_status(other_pixel).sent == 5)
        # The blocked pixel's refusal may still be on its way back (the release is written
        # before the breaker opens): wait for it rather than race it.
        await wait_for_async(lambda: engine.pixel_status(PIXEL).breaker is BreakerState.OPEN)
        assert engine.pixel_status(other_pixel).breaker is BreakerState.CLOSED
        assert len(emulator.state.events(other_pixel)) == 5
        assert (await outbox.stats(now=time.time())).depth_by_pixel == {PIXEL: 5}
    finally:
        await engine.stop(timeout=2)
