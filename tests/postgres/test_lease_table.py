"""Leases as rows of their own (migration 0010): a lease reads the queue rows and writes
one row of capirelay_leases; leases and settles of a pixel take turns on its lease lock.

What must hold across replicas: no event is leased by two live leases, a crashed
replica's lease lapses to another, a lapsed-and-retaken lease settles nothing for its
old holder, and a key is never taken over or expired while its event is queued or
leased (however old)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from pg_replicas import OpenReplica

from capirelay.outbox import DEDUP_WINDOW_SECONDS, Attempt, EnqueueStatus, NewEvent
from capirelay.outbox.postgres import PostgresOutbox
from capirelay.outbox.receipts import MetaAnswer

T0 = 1_800_000_000.0
LEASE = 30.0


def event(event_id: str, *, deadline: float = T0 + 86400) -> NewEvent:
    return NewEvent("111", "Purchase", event_id, b"{}", int(T0), deadline)


def _leases(url: str) -> list[tuple[str, list[int]]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT lease_id, ids FROM capirelay_leases").fetchall()
    return [(r[0], list(r[1])) for r in rows]


async def test_two_replicas_draining_one_pixel_never_lease_an_event_twice(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    a, b = await open_replica(listen=False), await open_replica(listen=False)
    await a.enqueue([event(f"e{i}", deadline=T0 + 86400 + i % 7) for i in range(400)], now=T0)
    delivered: list[int] = []

    async def drain(box: PostgresOutbox) -> None:
        while batch := await box.lease("111", limit=17, lease_seconds=LEASE, now=T0 + 1):
            delivered.extend(e.id for e in batch)
            await asyncio.sleep(0)  # let the other replica lease while this batch is held
            answer = MetaAnswer("F", len(batch))
            await box.ack_delivered([e.id for e in batch], now=T0 + 2, lease_id=batch[0].lease_id,
                                    answer=answer)  # fmt: skip

    await asyncio.gather(drain(a), drain(b), drain(a), drain(b))
    assert len(delivered) == 400 and len(set(delivered)) == 400
    assert (await a.stats(now=T0 + 3)).depth == 0
    assert _leases(postgres_url) == []  # every lease went with its last settle


async def test_a_crashed_replicas_lease_lapses_and_its_holder_cannot_settle_after_a_retake(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    crashed, alive = await open_replica(listen=False), await open_replica(listen=False)
    await alive.enqueue([event("a"), event("b"), event("c")], now=T0)
    stale = await crashed.lease("111", limit=2, lease_seconds=LEASE, now=T0)
    await crashed.close()  # SIGKILL-like: nothing settled, the lease row stays
    # Still held until it runs out: only "c" is free.
    [free] = await alive.lease("111", limit=10, lease_seconds=LEASE, now=T0 + LEASE - 1)
    assert free.event_id == "c"
    retaken = await alive.lease("111", limit=10, lease_seconds=LEASE, now=T0 + LEASE)
    assert sorted(e.id for e in retaken) == sorted(e.id for e in stale)
    # The retake took the ids off the lapsed lease: it holds nothing and is swept.
    assert sorted(lease_id for lease_id, _ in _leases(postgres_url)) == sorted(
        {free.lease_id, retaken[0].lease_id}
    )
    # The old holder's settles (through any replica, here a new one) touch nothing.
    late = await open_replica(listen=False)
    await late.ack_delivered([e.id for e in stale], now=T0 + LEASE, lease_id=stale[0].lease_id)
    await late.dead_letter([e.id for e in stale], reason="invalid", attempt=None,  # type: ignore[arg-type]
                           now=T0 + LEASE, lease_id=stale[0].lease_id)  # fmt: skip
    assert (
        await late.extend_lease(
            [e.id for e in stale], until=T0 + 99, now=T0 + LEASE, lease_id=stale[0].lease_id
        )
        == []
    )
    stats = await alive.stats(now=T0 + LEASE)
    assert (stats.depth, stats.leased, stats.dlq_size) == (3, 3, 0)
    await alive.ack([e.id for e in retaken], now=T0 + LEASE, lease_id=retaken[0].lease_id)
    await alive.ack([free.id], now=T0 + LEASE, lease_id=free.lease_id)
    assert (await alive.stats(now=T0 + LEASE)).depth == 0
    assert _leases(postgres_url) == []


async def test_a_partial_settle_keeps_the_rest_held(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    box = await open_replica(listen=False)
    await box.enqueue([event("a"), event("b"), event("c")], now=T0)
    leased = await box.lease("111", limit=3, lease_seconds=LEASE, now=T0)
    a, b, c = sorted(leased, key=lambda e: e.event_id)
    await box.ack([a.id], now=T0, lease_id=a.lease_id)
    await box.release([b.id], lease_id=b.lease_id)
    assert _leases(postgres_url) == [(c.lease_id, [c.id])]
    # b is ready again, c is still held.
    [again] = await box.lease("111", limit=10, lease_seconds=LEASE, now=T0 + 1)
    assert again.id == b.id
    assert await box.next_due_at("111") == T0 + LEASE
    # A failed attempt: c waits out its backoff (state 1), off the lease.
    failure = Attempt(at=T0 + 1, status=500, code=2, message="Service unavailable")
    await box.reschedule([c.id], next_attempt_at=T0 + 500, attempt=failure, lease_id=c.lease_id)
    await box.release([again.id], lease_id=again.lease_id)
    assert _leases(postgres_url) == []
    assert (await box.stats(now=T0 + 1)).leased == 0
    assert await box.next_due_at("111") == T0  # b is ready now
    assert await box.due_pixels(now=T0 + 1) == ["111"]
    assert [e.id for e in await box.lease("111", limit=10, lease_seconds=LEASE, now=T0 + 1)] == [
        b.id
    ]
    assert await box.due_pixels(now=T0 + 2) == []  # c backs off, b is held
    # Later both are due: c's backoff ended, b's lease ran out.
    due = await box.lease("111", limit=10, lease_seconds=LEASE, now=T0 + 500)
    assert sorted((e.id, e.attempts) for e in due) == [(b.id, 0), (c.id, 1)]


async def test_a_lapsed_lease_whose_rows_are_gone_is_swept(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    box = await open_replica(listen=False)
    await box.enqueue([event("gone")], now=T0)
    [held] = await box.lease("111", limit=1, lease_seconds=LEASE, now=T0)
    with psycopg.connect(postgres_url) as conn:  # e.g. an erasure deleted the row
        conn.execute("DELETE FROM capirelay_queue WHERE id = %s", (held.id,))
    assert len(_leases(postgres_url)) == 1
    assert await box.lease("111", limit=1, lease_seconds=LEASE, now=T0 + LEASE) == []
    assert _leases(postgres_url) == []


@pytest.mark.parametrize("lapsed", [False, True], ids=["leased", "lease-lapsed"])
async def test_an_old_key_is_never_taken_over_or_expired_while_its_event_is_leased(
    open_replica: OpenReplica, lapsed: bool
) -> None:
    first, second = await open_replica(listen=False), await open_replica(listen=False)
    await first.enqueue([event("held")], now=T0)
    later = T0 + DEDUP_WINDOW_SECONDS + 3600
    [held] = await first.lease("111", limit=1, lease_seconds=LEASE, now=T0)
    if not lapsed:
        assert await first.extend_lease(
            [held.id], until=later + LEASE, now=later - 1, lease_id=held.lease_id
        ) == [held.id]
    assert await second.expire_dedup(now=later) == 0
    assert await second.enqueue([event("held")], now=later) == [EnqueueStatus.DUPLICATE]
    assert (await second.stats(now=later)).depth == 1
    # Delivered: the key is unpinned and can be taken over after the window.
    await first.ack([held.id], now=later, lease_id=held.lease_id)
    assert await second.enqueue([event("held")], now=later + 1) == [EnqueueStatus.QUEUED]
