"""SQLite: the enqueues of one commit group claim their dedup keys and insert their rows
together (one statement each per group), with the same outcome as running them in turn;
and the writers of one file take turns on its writer lock.

Each test holds the writer thread on a blocking write, queues its calls behind it, then
lets it go: the calls queued meanwhile are one commit group.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from outbox_data import T0, make_event

from capirelay.outbox import DEDUP_WINDOW_SECONDS, EnqueueStatus, SQLiteOutbox
from capirelay.outbox.sqlite.writer import WriteOp, _open_turn_file, _run_group

QUEUED, DUPLICATE = EnqueueStatus.QUEUED, EnqueueStatus.DUPLICATE


@pytest.fixture
async def box(db_path: Path) -> AsyncIterator[SQLiteOutbox]:
    outbox = SQLiteOutbox(db_path)
    await outbox.open()
    try:
        yield outbox
    finally:
        await outbox.close()


async def one_group(
    box: SQLiteOutbox, calls: Sequence[Awaitable[Any]], *, commits: int = 1
) -> list[Any]:
    """Run ``calls`` as one commit group (all queued while the writer is held); they
    take ``commits`` commits (one, unless the group failed and each call ran alone)."""
    started, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait()

    loop = asyncio.get_running_loop()
    holder = asyncio.ensure_future(box._write(hold))
    await loop.run_in_executor(None, started.wait)
    tasks = [asyncio.ensure_future(call) for call in calls]
    writer = box._writer
    assert writer is not None
    # Each call submits before it awaits, all in the same iteration of the loop, and the
    # loop hands that iteration's writes to the writer together (submit_soon): once they
    # are in the inbox, every call's write is.
    while writer._batches or writer._inbox.empty():
        await asyncio.sleep(0)
    before = box.commits
    release.set()
    await holder
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert box.commits - before == 1 + commits  # the holder's, then the calls'
    return results


async def test_a_key_two_calls_of_a_group_share_is_queued_once(
    box: SQLiteOutbox, db_path: Path
) -> None:
    results = await one_group(
        box,
        [
            box.enqueue([make_event("a"), make_event("b")], now=T0),
            box.enqueue([make_event("b"), make_event("c"), make_event("c")], now=T0 + 1),
            box.enqueue([make_event("a")], now=T0 + 2),
            box.enqueue([make_event("d")], now=T0 + 3),
        ],
    )
    assert results == [[QUEUED, QUEUED], [DUPLICATE, QUEUED, DUPLICATE], [DUPLICATE], [QUEUED]]
    leased = await box.lease("111", limit=10, lease_seconds=30, now=T0 + 10)
    assert sorted(e.event_id for e in leased) == ["a", "b", "c", "d"]
    # Each row keeps its own call's clock reading (queued_at), and its insertion order.
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT event_id, queued_at FROM queue ORDER BY id").fetchall()
    assert rows == [("a", T0), ("b", T0), ("c", T0 + 1), ("d", T0 + 3)]


async def test_the_dedup_window_is_measured_from_each_calls_clock(box: SQLiteOutbox) -> None:
    assert await box.enqueue([make_event("old")], now=T0) == [QUEUED]
    [leased] = await box.lease("111", limit=1, lease_seconds=30, now=T0)
    await box.ack([leased.id], now=T0, lease_id=leased.lease_id)  # no longer queued
    results = await one_group(
        box,
        [
            box.enqueue([make_event("old")], now=T0 + DEDUP_WINDOW_SECONDS - 1),  # inside
            box.enqueue([make_event("old")], now=T0 + DEDUP_WINDOW_SECONDS),  # window over
            box.enqueue([make_event("old")], now=T0 + DEDUP_WINDOW_SECONDS + 1),  # just taken
        ],
    )
    assert results == [[DUPLICATE], [QUEUED], [DUPLICATE]]


async def test_other_writes_in_the_group_keep_their_place(box: SQLiteOutbox) -> None:
    """An ack between two enqueues of a key whose window is over frees the key for the
    second one only: enqueues are merged only with their neighbours, never across."""
    assert await box.enqueue([make_event("k")], now=T0) == [QUEUED]
    [leased] = await box.lease("111", limit=1, lease_seconds=30, now=T0)
    later = T0 + DEDUP_WINDOW_SECONDS
    results = await one_group(
        box,
        [
            box.enqueue([make_event("k")], now=later),  # still queued: a duplicate
            box.ack([leased.id], now=later, lease_id=leased.lease_id),
            box.enqueue([make_event("k")], now=later),  # delivered and expired: queued again
        ],
    )
    assert results == [[DUPLICATE], None, [QUEUED]]


async def test_a_failing_call_fails_alone_and_leaves_no_key(box: SQLiteOutbox) -> None:
    """The merged statement fails for the whole group; each call is then retried alone."""
    broken = replace(make_event("x"), payload=None)  # type: ignore[arg-type]  # NOT NULL
    results = await one_group(
        box,
        [
            box.enqueue([make_event("ok1")], now=T0),
            box.enqueue([broken], now=T0),
            box.enqueue([make_event("ok2")], now=T0),
        ],
        commits=2,
    )
    assert results[0] == [QUEUED] and results[2] == [QUEUED]
    assert isinstance(results[1], sqlite3.IntegrityError)
    assert await box.enqueue([make_event("x")], now=T0) == [QUEUED]  # its key was not kept


def test_a_group_runs_each_run_of_mergeable_ops_as_one(tmp_path: Path) -> None:
    """``_run_group``: consecutive ops sharing a merge function are one merge call; the
    rest run alone, all in group order."""
    calls: list[tuple[str, list[int]]] = []

    def merge(conn: sqlite3.Connection, ops: Sequence[WriteOp]) -> list[Any]:
        calls.append(("merge", [op.data for op in ops]))
        return [f"m{op.data}" for op in ops]

    def alone(n: int) -> Any:
        def fn(conn: sqlite3.Connection) -> str:
            calls.append(("fn", [n]))
            return f"f{n}"

        return fn

    loop = asyncio.new_event_loop()
    try:
        ops = [
            WriteOp(alone(n), loop, loop.create_future(), merge if n != 3 else None, n)
            for n in range(6)
        ]
        with sqlite3.connect(tmp_path / "x.db") as conn:
            results = _run_group(conn, ops[:1] + ops[1:3] + ops[3:4] + ops[4:6])
    finally:
        loop.close()
    assert calls == [("merge", [0, 1, 2]), ("fn", [3]), ("merge", [4, 5])]
    assert results == ["m0", "m1", "m2", "f3", "m4", "m5"]


# ------------------------------------------------------------------ taking turns


async def test_writers_of_one_file_take_turns_on_its_writer_lock(db_path: Path) -> None:
    """Each transaction holds an exclusive flock on ``<db>-writer``: a second outbox on
    the file (another ``serve`` worker) waits in the kernel for its turn, then writes."""
    first, second = SQLiteOutbox(db_path), SQLiteOutbox(db_path)
    await first.open()
    await second.open()
    turn_file = db_path.with_name(db_path.name + "-writer")
    try:
        started, release = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            started.set()
            release.wait()

        loop = asyncio.get_running_loop()
        holder = asyncio.ensure_future(first._write(hold))
        await loop.run_in_executor(None, started.wait)
        fd = os.open(turn_file, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # taken for the whole transaction
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waiting = asyncio.ensure_future(second.enqueue([make_event("w")], now=T0))
            writer = second._writer
            assert writer is not None
            await asyncio.sleep(0)  # the call submits its write
            # until the loop has handed it over and the second writer has taken it up
            while writer._batches or writer._inbox.qsize():
                await asyncio.sleep(0)
            assert not waiting.done()  # and waits for its turn while the first holds it
            release.set()
            await holder
            assert await waiting == [QUEUED]
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free between transactions
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        assert await first.enqueue([make_event("w")], now=T0) == [DUPLICATE]
    finally:
        await first.close()
        await second.close()


def test_without_a_turn_file_the_writer_relies_on_sqlites_lock(tmp_path: Path) -> None:
    assert _open_turn_file(tmp_path / "missing-dir" / "x.db-writer") is None
    assert _open_turn_file(None) is None
