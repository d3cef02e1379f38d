"""What only a shared outbox must get right: several PostgresOutbox instances (replicas)
on one database, connection loss and recovery, durability across reopen.

The single-process behaviour is the shared suite in ``tests/outbox`` (run on both
backends); these tests open two or more outboxes on the same fresh schema.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import psycopg
import pytest
from pg_replicas import OpenReplica

from capirelay.outbox import (
    DeadLetterReason,
    EnqueueStatus,
    NewEvent,
    StorageUnavailable,
)
from capirelay.outbox.postgres import PostgresOutbox, load_queries
from waiting import wait_for_async

QUEUED, DUPLICATE = EnqueueStatus.QUEUED, EnqueueStatus.DUPLICATE
T0 = 1_800_000_000.0


def event(event_id: str, *, pixel_id: str = "111", deadline: float = T0 + 86400) -> NewEvent:
    return NewEvent(
        pixel_id=pixel_id,
        event_name="Purchase",
        event_id=event_id,
        payload=b'{"event_name":"Purchase"}',
        event_time=int(T0),
        deadline=deadline,
    )


def test_named_queries_are_parsed_and_unique() -> None:
    queries = load_queries()
    assert {"enqueue", "lease", "promote_due", "ack", "dead_letter", "hold_pixel"} <= set(queries)
    assert all(q and not q.endswith(";") for q in queries.values())
    with pytest.raises(ValueError, match="twice"):
        load_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


async def test_replicas_racing_on_the_same_keys_queue_each_once(open_replica: OpenReplica) -> None:
    replicas = [await open_replica() for _ in range(3)]
    keys = [f"hook-{i}" for i in range(200)]
    # Every replica receives every webhook, in a different order, all at once.
    calls = [
        replica.enqueue([event(k)], now=T0)
        for n, replica in enumerate(replicas)
        for k in (keys if n % 2 == 0 else reversed(keys))
    ]
    results = await asyncio.gather(*calls)
    queued = sum(r == [QUEUED] for r in results)
    assert queued == len(keys)
    assert sum(r == [DUPLICATE] for r in results) == 2 * len(keys)
    assert (await replicas[0].stats(now=T0)).depth == len(keys)


async def test_overlapping_batches_from_two_replicas_do_not_deadlock(
    open_replica: OpenReplica,
) -> None:
    a, b = await open_replica(), await open_replica()
    forward = [event(f"k{i}") for i in range(300)]
    backward = list(reversed(forward))
    results = await asyncio.gather(
        *(a.enqueue(forward, now=T0) for _ in range(4)),
        *(b.enqueue(backward, now=T0) for _ in range(4)),
    )
    queued = sum(s == QUEUED for statuses in results for s in statuses)
    assert queued == len(forward)


async def test_concurrent_leases_take_disjoint_rows(open_replica: OpenReplica) -> None:
    replicas = [await open_replica() for _ in range(3)]
    await replicas[0].enqueue([event(f"e{i}") for i in range(600)], now=T0)
    batches = await asyncio.gather(
        *(r.lease("111", limit=50, lease_seconds=30, now=T0) for r in replicas for _ in range(5))
    )
    ids = [e.id for batch in batches for e in batch]
    assert len(ids) == len(set(ids))  # no row leased twice
    assert len(ids) > 50  # SKIP LOCKED: concurrent leases did not serialize to one winner


async def test_a_dead_replicas_lease_expires_to_another(open_replica: OpenReplica) -> None:
    dead, alive = await open_replica(), await open_replica()
    await alive.enqueue([event("a"), event("b")], now=T0)
    taken = await dead.lease("111", limit=10, lease_seconds=30, now=T0)
    assert len(taken) == 2
    assert await alive.lease("111", limit=10, lease_seconds=30, now=T0 + 29) == []
    assert await alive.due_pixels(now=T0 + 29) == []
    assert await alive.due_pixels(now=T0 + 30) == ["111"]
    again = await alive.lease("111", limit=10, lease_seconds=30, now=T0 + 30)
    assert {e.id for e in again} == {e.id for e in taken}
    # The stalled replica wakes up and gives "its" events back: they are not its own any
    # more, so nothing happens and the new holder keeps them.
    await dead.release([e.id for e in taken], lease_id=taken[0].lease_id)
    assert await alive.lease("111", limit=10, lease_seconds=30, now=T0 + 31) == []
    await alive.ack([e.id for e in again], now=T0 + 31, lease_id=again[0].lease_id)
    assert (await alive.stats(now=T0 + 31)).depth == 0


async def test_a_hold_stops_every_replica_until_it_ends(open_replica: OpenReplica) -> None:
    tripped, other = await open_replica(), await open_replica()
    await other.enqueue([event("a")], now=T0)
    await tripped.hold_pixel("111", until=T0 + 60, reason="breaker", now=T0, code=190)
    # A shorter (throttle) hold does not shorten it.
    await tripped.hold_pixel("111", until=T0 + 5, reason="throttle", now=T0)
    assert await other.lease("111", limit=10, lease_seconds=30, now=T0 + 10) == []
    assert await other.due_pixels(now=T0 + 10) == []
    assert await other.next_due_at("111") == T0 + 60


async def test_after_a_breaker_hold_one_replica_probes_and_an_ack_lifts_it(
    open_replica: OpenReplica,
) -> None:
    tripped, first, second = [await open_replica() for _ in range(3)]
    await tripped.enqueue([event(f"e{i}") for i in range(4)], now=T0)
    await tripped.hold_pixel("111", until=T0 + 60, reason="breaker", now=T0, code=190)
    # The hold ran out: the first replica to lease sends the probe, and re-arms the hold
    # for the others, who lease nothing.
    both = await asyncio.gather(
        first.lease("111", limit=1, lease_seconds=30, now=T0 + 60),
        second.lease("111", limit=1, lease_seconds=30, now=T0 + 60),
    )
    assert sorted(len(batch) for batch in both) == [0, 1]
    assert await tripped.lease("111", limit=10, lease_seconds=30, now=T0 + 61) == []
    assert await tripped.due_pixels(now=T0 + 61) == []
    # The probe was accepted: the ack lifts the hold on every replica.
    [probe] = [e for batch in both for e in batch]
    await first.ack([probe.id], now=T0 + 62, lease_id=probe.lease_id)
    assert len(await second.lease("111", limit=10, lease_seconds=30, now=T0 + 62)) == 3


async def test_a_throttle_hold_just_runs_out(open_replica: OpenReplica) -> None:
    throttled, other = await open_replica(), await open_replica()
    await other.enqueue([event("a"), event("b")], now=T0)
    await throttled.hold_pixel("111", until=T0 + 5, reason="throttle", now=T0, code=80004)
    assert await other.lease("111", limit=10, lease_seconds=30, now=T0 + 4) == []
    assert len(await other.lease("111", limit=1, lease_seconds=30, now=T0 + 5)) == 1
    assert len(await throttled.lease("111", limit=1, lease_seconds=30, now=T0 + 5)) == 1


async def test_unhold_lifts_the_hold_for_everyone(open_replica: OpenReplica) -> None:
    tripped, other = await open_replica(), await open_replica()
    await other.enqueue([event("a")], now=T0)
    await tripped.hold_pixel("111", until=T0 + 600, reason="breaker", now=T0)
    await tripped.unhold_pixel("111")
    assert len(await other.lease("111", limit=10, lease_seconds=30, now=T0)) == 1


async def test_notify_wakes_the_other_replicas(open_replica: OpenReplica) -> None:
    sender, listener = await open_replica(), await open_replica()
    await wait_for_async(lambda: listener.listening, timeout=5, what="LISTEN started")
    assert await listener.wait_for_work(0.05) == set()
    await sender.enqueue([event("a"), event("b", pixel_id="222")], now=T0)
    assert await listener.wait_for_work(5) == {"111", "222"}
    # A duplicate is not news.
    await sender.enqueue([event("a")], now=T0)
    assert await listener.wait_for_work(0.2) == set()


async def test_without_a_listener_wait_for_work_is_a_plain_timeout(
    open_replica: OpenReplica,
) -> None:
    box = await open_replica(listen=False)
    await box.enqueue([event("a")], now=T0)
    assert await box.wait_for_work(0.05) == set()


async def test_reopen_keeps_queue_dead_letters_and_dedup(postgres_url: str) -> None:
    first = PostgresOutbox(postgres_url, pool_size=2)
    await first.open()
    await first.enqueue([event("a"), event("b")], now=T0)
    [leased, _] = await first.lease("111", limit=2, lease_seconds=30, now=T0)
    await first.dead_letter(
        [leased.id], reason=DeadLetterReason.INVALID, attempt=None, now=T0, lease_id=leased.lease_id
    )
    await first.close()
    second = PostgresOutbox(postgres_url, pool_size=2)
    await second.open()
    try:
        assert [d.event_id for d in await second.dlq_list()] == ["a"]
        assert await second.enqueue([event("b")], now=T0 + 1) == [DUPLICATE]
        leased_again = await second.lease("111", limit=9, lease_seconds=1, now=T0 + 31)
        assert [e.event_id for e in leased_again] == ["b"]
    finally:
        await second.close()


async def test_a_failing_write_leaves_nothing_behind(open_replica: OpenReplica) -> None:
    box = await open_replica()
    broken = replace(event("x"), payload=None)  # type: ignore[arg-type]
    with pytest.raises(psycopg.errors.NotNullViolation):
        await box.enqueue([event("ok"), broken], now=T0)
    # All or nothing: neither the good event nor either dedup key was kept.
    assert await box.enqueue([event("ok"), event("x")], now=T0) == [QUEUED, QUEUED]


async def test_lost_connections_are_storage_unavailable_then_recover(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    box = await open_replica(listen=False)
    await box.enqueue([event("a")], now=T0)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        # Every connection of this schema's outbox dies (an admin kill, a failover).
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    failures = 0
    for attempt in range(20):
        try:
            assert await box.enqueue([event(f"after-{attempt}")], now=T0) == [QUEUED]
            break
        except StorageUnavailable as exc:
            failures += 1
            assert "PostgreSQL outbox unavailable" in str(exc)
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the outbox did not recover")
    assert failures >= 1
    assert await box.ping()


async def test_unreachable_database_fails_to_open_and_ping_is_false() -> None:
    box = PostgresOutbox("postgresql://postgres@127.0.0.1:1/nothing", connect_timeout=1)
    with pytest.raises(StorageUnavailable) as caught:
        await box.open()
    assert "nothing" not in str(caught.value)  # no URL parts in the message
    assert not await box.ping()
    with pytest.raises(StorageUnavailable, match="not open"):
        await box.enqueue([event("a")], now=T0)
