"""SQLiteOutbox on a real file: durability, migrations, group commit, disk full, closing."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from outbox_data import T0, make_event

from capirelay.outbox import (
    DEDUP_WINDOW_SECONDS,
    DeadLetterReason,
    EnqueueStatus,
    SQLiteOutbox,
    StorageUnavailable,
)
from capirelay.outbox._sql import split_queries
from capirelay.outbox.base import ATTEMPT_LOG_LIMIT
from capirelay.outbox.sqlite import QUERIES
from capirelay.outbox.sqlite import writer as writer_module
from capirelay.outbox.sqlite.writer import (
    MIGRATIONS,
    GroupCommitWriter,
    Reader,
    WriteOp,
    migrate,
)
from waiting import wait_for_async

QUEUED, DUPLICATE = EnqueueStatus.QUEUED, EnqueueStatus.DUPLICATE


# --------------------------------------------------------------------- durability


async def test_reopen_keeps_queue_dead_letters_and_dedup(db_path: Path) -> None:
    first = SQLiteOutbox(db_path)
    await first.open()
    await first.enqueue([make_event("a"), make_event("b")], now=T0)
    [leased] = await first.lease("111", limit=1, lease_seconds=30, now=T0)
    await first.dead_letter(
        [leased.id], reason=DeadLetterReason.INVALID, attempt=None, now=T0, lease_id=leased.lease_id
    )
    await first.close()

    second = SQLiteOutbox(db_path)
    await second.open()
    try:
        assert [
            e.event_id for e in await second.lease("111", limit=9, lease_seconds=1, now=T0)
        ] == ["b"]
        assert [d.event_id for d in await second.dlq_list()] == ["a"]
        assert await second.enqueue([make_event("b")], now=T0 + 1) == [DUPLICATE]
    finally:
        await second.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == MIGRATIONS[-1].version
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_newer_schema_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = 999")
    box = SQLiteOutbox(db_path)
    with pytest.raises(StorageUnavailable, match="newer"):
        await box.open()


# Group commit is the SQLite writer thread's mechanism (PostgreSQL: one transaction per call).
@pytest.mark.sqlite_only
async def test_concurrent_enqueues_share_commits(outbox: SQLiteOutbox) -> None:
    calls = 200
    before = outbox.commits
    statuses = await asyncio.gather(
        *(outbox.enqueue([make_event(f"e{i}")], now=T0) for i in range(calls))
    )
    assert all(s == [QUEUED] for s in statuses)
    commits = outbox.commits - before
    assert 1 <= commits < calls
    assert (await outbox.stats(now=T0)).depth == calls


# SQLite group commit; the PostgreSQL variant is in tests/postgres/test_postgres_outbox.py.
@pytest.mark.sqlite_only
async def test_a_failing_write_does_not_fail_its_group(outbox: SQLiteOutbox) -> None:
    broken = replace(make_event("x"), payload=None)  # type: ignore[arg-type]
    results = await asyncio.gather(
        outbox.enqueue([make_event("ok1")], now=T0),
        outbox.enqueue([broken], now=T0),
        outbox.enqueue([make_event("ok2")], now=T0),
        return_exceptions=True,
    )
    assert results[0] == [QUEUED] and results[2] == [QUEUED]
    assert isinstance(results[1], sqlite3.IntegrityError)  # NOT NULL payload
    # The failed call left nothing behind, not even its dedup key.
    assert await outbox.enqueue([make_event("x")], now=T0) == [QUEUED]


async def test_disk_full_is_storage_unavailable_and_the_writer_recovers(db_path: Path) -> None:
    box = SQLiteOutbox(db_path, max_bytes=256 * 1024)
    await box.open()
    try:
        big = b"x" * 4000
        queued = 0
        with pytest.raises(StorageUnavailable, match="SQLITE_FULL"):
            for i in range(1000):
                await box.enqueue([replace(make_event(f"e{i}"), payload=big)], now=T0)
                queued += 1
        assert queued > 10
        assert await box.ping()
        # Space comes back (here: delivered events are acked away) and writes work again.
        leased = await box.lease("111", limit=queued, lease_seconds=30, now=T0)
        await box.ack([e.id for e in leased], now=T0, lease_id=leased[0].lease_id)
        assert await box.enqueue([make_event("after")], now=T0) == [QUEUED]
    finally:
        await box.close()


async def test_closed_outbox_is_unavailable(db_path: Path) -> None:
    box = SQLiteOutbox(db_path)
    await box.open()
    await box.close()
    assert not await box.ping()
    with pytest.raises(StorageUnavailable):
        await box.enqueue([make_event("a")], now=T0)


@pytest.mark.sqlite_only
async def test_close_runs_the_writes_already_submitted(db_path: Path) -> None:
    box = SQLiteOutbox(db_path)
    await box.open()
    pending = [asyncio.ensure_future(box.enqueue([make_event(f"e{i}")], now=T0)) for i in range(50)]
    closing = asyncio.ensure_future(box.close())
    results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)
    await asyncio.wait_for(closing, 10)
    assert results == [[QUEUED]] * 50
    reopened = SQLiteOutbox(db_path)
    await reopened.open()
    try:
        assert (await reopened.stats(now=T0)).depth == 50
    finally:
        await reopened.close()


@pytest.mark.sqlite_only
async def test_a_stopping_writer_refuses_new_writes_at_once(db_path: Path) -> None:
    writer = GroupCommitWriter(lambda: sqlite3.connect(db_path, isolation_level=None), 8)
    writer.start()
    writer.ready.result(timeout=10)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[object] = loop.create_future()
    writer.submit(WriteOp(lambda conn: "ran", loop, done))
    writer.stop()
    late: asyncio.Future[object] = loop.create_future()
    with pytest.raises(StorageUnavailable, match="closing"):
        writer.submit(WriteOp(lambda conn: "never", loop, late))
    assert await asyncio.wait_for(done, 10) == "ran"  # submitted before the stop: it ran
    await loop.run_in_executor(None, writer.join, 10)
    assert not writer.is_alive()


@pytest.mark.sqlite_only
async def test_a_commit_is_counted_before_its_callers_hear_of_it(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer thread is held right after it answers: a caller that has its answer
    # finds the commit counted (the counts were once taken after the answer, and a
    # test reading them as soon as it was answered failed now and then).
    held = threading.Event()
    answer = writer_module._answer

    def answer_then_hold(outcomes: list[writer_module.Outcome]) -> None:
        answer(outcomes)
        held.wait(10)

    monkeypatch.setattr(writer_module, "_answer", answer_then_hold)
    writer = GroupCommitWriter(lambda: sqlite3.connect(db_path, isolation_level=None), 64)
    writer.start()
    writer.ready.result(timeout=10)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[object] = loop.create_future()
    try:
        writer.submit(WriteOp(lambda conn: "ran", loop, done))
        assert await asyncio.wait_for(done, 10) == "ran"
        assert (writer.commits, writer.operations) == (1, 1)
    finally:
        held.set()
        writer.stop()
        await loop.run_in_executor(None, writer.join, 10)


@pytest.mark.sqlite_only
async def test_writes_queued_while_another_process_holds_the_lock_join_its_group(
    db_path: Path,
) -> None:
    # Another writer (here: the test, on its own open file description) holds the turn
    # file.  The writer takes the first write, then waits for the turn; the writes queued
    # meanwhile must ride in the same commit once it gets the lock, not wait for the next.
    turn = db_path.with_name(db_path.name + "-writer")
    writer = GroupCommitWriter(
        lambda: sqlite3.connect(db_path, isolation_level=None), 64, turn_file=turn
    )
    writer.start()
    writer.ready.result(timeout=10)
    loop = asyncio.get_running_loop()
    held = os.open(turn, os.O_RDWR)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        futures: list[asyncio.Future[object]] = [loop.create_future() for _ in range(5)]
        writer.submit(WriteOp(lambda conn: 0, loop, futures[0]))
        # The writer has taken the first write from its inbox (it now waits for the turn).
        await wait_for_async(lambda: writer._inbox.empty(), what="the writer took the write")
        for i, future in enumerate(futures[1:], 1):
            writer.submit(WriteOp(lambda conn, i=i: i, loop, future))
        fcntl.flock(held, fcntl.LOCK_UN)
        assert await asyncio.wait_for(asyncio.gather(*futures), 10) == [0, 1, 2, 3, 4]
        assert (writer.commits, writer.operations) == (1, 5)
    finally:
        os.close(held)
        writer.stop()
        await loop.run_in_executor(None, writer.join, 10)


@pytest.mark.sqlite_only
async def test_version_1_files_upgrade_with_their_queued_keys_pinned(db_path: Path) -> None:
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        migrate(conn, MIGRATIONS[:1])
        conn.execute(
            "INSERT INTO queue (pixel_id, event_name, event_id, payload, event_time, deadline,"
            " source, queued_at, available_at) VALUES ('111', 'Purchase', 'old', x'7b7d', 1, ?,"
            " 'api', ?, ?)",
            (T0 + 9e5, T0, T0),
        )
        conn.execute("INSERT INTO dedup VALUES ('111', 'Purchase', 'old', ?)", (T0,))
    box = SQLiteOutbox(db_path)
    await box.open()
    try:
        later = T0 + DEDUP_WINDOW_SECONDS + 1
        assert await box.expire_dedup(now=later) == 0
        assert await box.enqueue([make_event("old")], now=later) == [DUPLICATE]
        [leased] = await box.lease("111", limit=10, lease_seconds=30, now=later)
        await box.ack([leased.id], now=later, lease_id=leased.lease_id)
        assert (await box.stats(now=later)).depth == 0
        assert await box.expire_dedup(now=later) == 1
    finally:
        await box.close()


def test_the_packaged_sql_loads_with_its_constants_filled() -> None:
    """queries.sql and migrations/ ship in the package and load through the shared loader:
    only the per-call tokens ({values}, {where}) are left in the text."""
    per_call = {name for name, sql in QUERIES.items() if "{" in sql}
    assert per_call == {
        "claim_dedup_keys",
        "insert_queued",
        "claim_order_keys",
        "dlq_list",
        "dlq_purge_filter",
    }
    assert f">= {ATTEMPT_LOG_LIMIT}" in QUERIES["reschedule"]
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    with pytest.raises(ValueError, match="defined twice"):
        split_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


@pytest.mark.sqlite_only
async def test_a_read_sees_one_snapshot_whatever_commits_meanwhile(db_path: Path) -> None:
    # The queue statistics are several statements (depth, then the earliest deadline per
    # state): a row the writer moved between two of them was counted but had no deadline.
    with sqlite3.connect(db_path, isolation_level=None) as setup:
        setup.execute("PRAGMA journal_mode = WAL")
        setup.execute("CREATE TABLE t (x INTEGER)")
    reader = Reader(lambda: sqlite3.connect(db_path, isolation_level=None))

    def two_counts(conn: sqlite3.Connection) -> tuple[int, int]:
        before = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        with sqlite3.connect(db_path, isolation_level=None) as writer:
            writer.execute("INSERT INTO t VALUES (1)")  # committed between the two reads
        return before, conn.execute("SELECT count(*) FROM t").fetchone()[0]

    try:
        assert await reader.read(two_counts) == (0, 0)
        assert await reader.read(two_counts) == (1, 1)  # the next read sees the commit
    finally:
        await reader.close()
