"""The enqueues of one event-loop iteration share one PostgreSQL transaction
(capirelay.outbox.postgres._coalesce): one commit for many requests, and for each caller
exactly what it would have been told alone, only after that commit."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from pg_replicas import OpenReplica, hold_dedup_key, one_backend_waits_on_a_lock

from capirelay.outbox import EnqueueStatus, NewEvent, StorageUnavailable
from capirelay.outbox.postgres import PostgresOutbox
from capirelay.outbox.postgres._coalesce import MAX_GROUP_EVENTS, NOW_TOLERANCE
from waiting import wait_for

T0 = 1_800_000_000.0
QUEUED, DUPLICATE, REJECTED = EnqueueStatus.QUEUED, EnqueueStatus.DUPLICATE, EnqueueStatus.REJECTED


def event(event_id: str) -> NewEvent:
    return NewEvent("111", "Purchase", event_id, b"{}", int(T0), T0 + 86400)


def _writers(url: str) -> list[str]:
    """The transaction ids that inserted the queued rows, one per group."""
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT DISTINCT xmin::text FROM capirelay_queue")]


async def test_one_iterations_enqueues_commit_as_one_transaction(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    box = await open_replica(listen=False)
    before = box._coalescer.groups
    results = await asyncio.gather(*(box.enqueue([event(f"e{i}")], now=T0) for i in range(20)))
    assert results == [[QUEUED]] * 20
    assert box._coalescer.groups == before + 1
    assert len(_writers(postgres_url)) == 1
    assert (await box.stats(now=T0)).depth == 20


async def test_each_caller_is_told_what_it_would_have_been_told_alone(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    box = await open_replica(listen=False)
    await box.enqueue([event("old")], now=T0)
    bad = NewEvent("111", "Purchase", "nul\x00byte", b"{}", int(T0), T0 + 86400)
    results = await asyncio.gather(
        box.enqueue([event("a"), event("b")], now=T0),
        box.enqueue([event("b"), event("c")], now=T0),  # b: the earlier call has it
        box.enqueue([bad, event("d")], now=T0),  # a value PostgreSQL cannot store
        box.enqueue([event("old"), event("a")], now=T0),
    )
    assert results == [
        [QUEUED, QUEUED],
        [DUPLICATE, QUEUED],
        [REJECTED, QUEUED],
        [DUPLICATE, DUPLICATE],
    ]
    queued = [e.event_id for e in await box.lease("111", limit=50, lease_seconds=30, now=T0)]
    assert sorted(queued) == ["a", "b", "c", "d", "old"]


async def test_calls_far_apart_in_time_or_large_are_not_merged(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    box = await open_replica(listen=False)
    big = [event(f"big{i}") for i in range(MAX_GROUP_EVENTS)]
    results = await asyncio.gather(
        box.enqueue([event("now")], now=T0),
        box.enqueue([event("later")], now=T0 + NOW_TOLERANCE + 1),
        box.enqueue(big, now=T0),
    )
    assert results == [[QUEUED], [QUEUED], [QUEUED] * MAX_GROUP_EVENTS]
    assert len(_writers(postgres_url)) == 3
    with psycopg.connect(postgres_url) as conn:
        times = dict(
            conn.execute(
                "SELECT event_id, queued_at FROM capirelay_queue WHERE event_id IN ('now', 'later')"
            ).fetchall()
        )
    assert times == {"now": T0, "later": T0 + NOW_TOLERANCE + 1}


async def test_no_caller_is_answered_before_the_group_commits(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    box = await open_replica(listen=False)
    # Another transaction holds key "k" (uncommitted): the group's dedup insert waits on it.
    blocker = hold_dedup_key(postgres_url, "k", T0)
    try:
        calls = [asyncio.create_task(box.enqueue([event(n)], now=T0)) for n in ("j", "k", "l")]
        waits = one_backend_waits_on_a_lock(postgres_url)
        await asyncio.to_thread(wait_for, waits, 30, what="the group waits")
        assert not any(call.done() for call in calls)
        assert _writers(postgres_url) == []  # nothing of the group is visible yet
        blocker.rollback()  # the key is free again: the group claims it
    finally:
        blocker.close()
    assert [await call for call in calls] == [[QUEUED]] * 3
    assert len(_writers(postgres_url)) == 1


async def test_a_cancelled_caller_leaves_the_others_group_alone(
    open_replica: OpenReplica,
) -> None:
    box = await open_replica(listen=False)
    calls = [asyncio.create_task(box.enqueue([event(f"e{i}")], now=T0)) for i in range(3)]
    await asyncio.sleep(0)  # the three have joined the group; it has not run yet
    calls[1].cancel()
    with pytest.raises(asyncio.CancelledError):
        await calls[1]
    assert [await calls[0], await calls[2]] == [[QUEUED], [QUEUED]]


async def test_a_failed_group_fails_every_caller(open_replica: OpenReplica) -> None:
    box = await open_replica(listen=False)
    await box.close()
    results = await asyncio.gather(
        *(box.enqueue([event(f"e{i}")], now=T0) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, StorageUnavailable) for r in results)


def _client_messages(trace: str) -> list[str]:
    """The protocol messages the client sent, by type (libpq's trace of the connection: a
    timestamp, F for the client, the length, the type; a query's text spans lines)."""
    return [
        fields[3]
        for line in trace.splitlines()
        if len(fields := line.split("\t")) > 3 and fields[1] == "F"
    ]


async def test_an_enqueue_is_one_round_trip_and_the_connection_goes_back_transactional(
    postgres_url: str, tmp_path: Path
) -> None:
    """One statement on an autocommit connection (no BEGIN, no COMMIT: three round trips
    fewer for a request of order events); the pool lends that connection out again in
    transaction mode, so work of several statements stays atomic."""
    box = PostgresOutbox(postgres_url, pool_size=1, listen=False)
    await box.open()
    try:
        order = replace(event("o1"), order_key=b"k" * 16)
        await box.enqueue([event("warm-up")], now=T0)
        trace = tmp_path / "libpq.trace"
        with trace.open("w") as sink:
            async with box._pool.connection() as conn:  # the pool's only connection
                conn.pgconn.trace(sink.fileno())
            assert await box.enqueue([order, event("e1")], now=T0) == [QUEUED, QUEUED]
            async with box._pool.connection() as conn:
                conn.pgconn.untrace()
                assert not conn.autocommit
                await conn.execute("SELECT 1")
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        sent = _client_messages(trace.read_text())
        assert sent.count("Execute") == 1, sent  # one statement (the ledger claim in it)
        assert "Query" not in sent, sent  # no simple-query BEGIN or COMMIT
        assert await box.order_ledger_size() == 1
        assert (await box.stats(now=T0)).depth == 3
    finally:
        await box.close()


async def test_a_connection_whose_statement_failed_in_autocommit_goes_back_transactional(
    postgres_url: str,
) -> None:
    """A value PostgreSQL cannot store fails the one-statement enqueue on the autocommit
    connection (the request is then split down to the bad event); the connection the
    pool lends out next is in transaction mode all the same."""
    box = PostgresOutbox(postgres_url, pool_size=1, listen=False)
    await box.open()
    try:
        bad = NewEvent("111", "Purchase", "nul\x00byte", b"{}", int(T0), T0 + 86400)
        assert await box.enqueue([bad, event("fine")], now=T0) == [REJECTED, QUEUED]
        async with box._pool.connection() as conn:
            assert not conn.autocommit
            await conn.execute("SELECT 1")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    finally:
        await box.close()
