"""The SQLite writer's hand-off: one event-loop iteration's writes reach it as ONE item.

``SQLiteOutbox`` hands each write to :meth:`GroupCommitWriter.submit_soon`, which keeps
the writes of the loop's current iteration together and puts them in the writer's inbox
as one list when the loop next runs its callbacks.  What must not change: every caller
hears about its write only after the group carrying it commits, a failed group fails
each of its writes with its own error, dedup is decided in call order, and closing runs
what was submitted before it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from outbox_data import T0, make_event

from capirelay.outbox import EnqueueStatus, SQLiteOutbox, StorageUnavailable
from capirelay.outbox.sqlite.writer import GroupCommitWriter, WriteOp
from waiting import wait_for_async

QUEUED, DUPLICATE = EnqueueStatus.QUEUED, EnqueueStatus.DUPLICATE

pytestmark = pytest.mark.sqlite_only


class CountingInbox:
    """The writer's inbox, counting what is put in it (each put may wake the writer)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.items: list[Any] = []

    def put(self, item: Any) -> None:
        self.items.append(item)
        self.inner.put(item)

    def get(self, *args: Any, **kw: Any) -> Any:
        return self.inner.get(*args, **kw)

    def get_nowait(self) -> Any:
        return self.inner.get_nowait()

    def empty(self) -> bool:
        return bool(self.inner.empty())


def _writer(box: SQLiteOutbox) -> GroupCommitWriter:
    writer = box._writer
    assert writer is not None
    return writer


def _count_inbox(box: SQLiteOutbox) -> CountingInbox:
    writer = _writer(box)
    counting = CountingInbox(writer._inbox)
    writer._inbox = counting  # type: ignore[assignment]
    return counting


def _queued_ids(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM queue ORDER BY id")]


async def test_one_iterations_writes_reach_the_writer_as_one_item_and_one_commit(
    db_path: Path,
) -> None:
    box = SQLiteOutbox(db_path)
    await box.open()
    try:
        inbox = _count_inbox(box)
        commits, operations = box.commits, box.write_operations
        # gather starts the 50 calls in the same iteration of the loop.
        statuses = await asyncio.gather(
            *(box.enqueue([make_event(f"e{i}")], now=T0) for i in range(50))
        )
        assert statuses == [[QUEUED]] * 50
        assert len(inbox.items) == 1 and len(inbox.items[0]) == 50
        assert (box.commits - commits, box.write_operations - operations) == (1, 50)
        assert _queued_ids(db_path) == [f"e{i}" for i in range(50)]
        # The next iteration's writes are a new item.
        assert await box.enqueue([make_event("later")], now=T0) == [QUEUED]
        assert len(inbox.items) == 2
    finally:
        await box.close()


async def test_an_item_larger_than_max_group_is_carried_over_in_order(db_path: Path) -> None:
    box = SQLiteOutbox(db_path, max_group=4)
    await box.open()
    try:
        inbox = _count_inbox(box)
        commits = box.commits
        ids = [f"e{i}" for i in range(9)] + ["e3"]  # the last repeats a key of the first group
        statuses = await asyncio.gather(*(box.enqueue([make_event(i)], now=T0) for i in ids))
        assert statuses == [[QUEUED]] * 9 + [[DUPLICATE]]
        assert len(inbox.items) == 1
        assert box.commits - commits == 3  # 4 + 4 + 2
        assert _queued_ids(db_path) == ids[:9]
    finally:
        await box.close()


async def test_nothing_is_answered_before_the_groups_commit(db_path: Path) -> None:
    # Another writer of the file (the test) holds the writers' turn: the group cannot
    # commit, so no call may have its answer, and no row may be visible, until it is let go.
    turn = db_path.with_name(db_path.name + "-writer")
    box = SQLiteOutbox(db_path)
    await box.open()
    held = os.open(turn, os.O_RDWR)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        writer = _writer(box)
        calls = [
            asyncio.ensure_future(box.enqueue([make_event(f"e{i}")], now=T0)) for i in range(10)
        ]
        await wait_for_async(
            lambda: writer._inbox.empty() and not writer._batches,
            what="the writer took the iteration's writes",
        )
        assert not any(call.done() for call in calls)
        assert _queued_ids(db_path) == []
        fcntl.flock(held, fcntl.LOCK_UN)
        assert await asyncio.wait_for(asyncio.gather(*calls), 10) == [[QUEUED]] * 10
        assert len(_queued_ids(db_path)) == 10
    finally:
        os.close(held)
        await box.close()


async def test_a_failed_group_fails_each_of_its_writes_with_its_own_error(db_path: Path) -> None:
    box = SQLiteOutbox(db_path, max_bytes=256 * 1024)
    await box.open()
    try:
        too_big = b"x" * (300 * 1024)  # no single row of it fits under the quota
        broken = replace(make_event("broken"), payload=None)  # type: ignore[arg-type]
        commits = box.commits
        results = await asyncio.gather(
            box.enqueue([replace(make_event("big1"), payload=too_big)], now=T0),
            box.enqueue([make_event("small")], now=T0),
            box.enqueue([broken], now=T0),
            box.enqueue([replace(make_event("big2"), payload=too_big)], now=T0),
            return_exceptions=True,
        )
        assert isinstance(results[0], StorageUnavailable) and "SQLITE_FULL" in str(results[0])
        assert results[1] == [QUEUED]  # retried alone, it fits
        assert isinstance(results[2], sqlite3.IntegrityError)  # NOT NULL payload
        assert isinstance(results[3], StorageUnavailable) and "SQLITE_FULL" in str(results[3])
        assert box.commits - commits == 1  # only "small" committed
        assert _queued_ids(db_path) == ["small"]
        # Nothing of the failed writes stayed behind, not even their dedup keys.
        assert await box.enqueue([make_event("big1"), make_event("broken")], now=T0) == [
            QUEUED,
            QUEUED,
        ]
    finally:
        await box.close()


async def test_writes_of_an_iteration_in_which_the_writer_stops_are_refused(
    db_path: Path,
) -> None:
    writer = GroupCommitWriter(lambda: sqlite3.connect(db_path, isolation_level=None), 8)
    writer.start()
    writer.ready.result(timeout=10)
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[object]] = [loop.create_future() for _ in range(3)]
    for i, future in enumerate(futures):
        writer.submit_soon(WriteOp(lambda conn, i=i: i, loop, future))
    writer.stop()  # before the loop hands the iteration's writes over
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
    assert all(isinstance(r, StorageUnavailable) and "closing" in str(r) for r in results)
    with pytest.raises(StorageUnavailable, match="closing"):
        writer.submit_soon(WriteOp(lambda conn: None, loop, loop.create_future()))
    await loop.run_in_executor(None, writer.join, 10)
    assert writer.operations == 0


async def test_close_runs_the_writes_of_its_own_iteration(db_path: Path) -> None:
    box = SQLiteOutbox(db_path)
    await box.open()
    calls = [asyncio.ensure_future(box.enqueue([make_event(f"e{i}")], now=T0)) for i in range(5)]
    await asyncio.sleep(0)  # the calls have run up to their hand-off; not yet flushed
    assert _writer(box)._batches
    await box.close()
    assert await asyncio.gather(*calls) == [[QUEUED]] * 5
    assert len(_queued_ids(db_path)) == 5


async def test_two_event_loops_each_hand_over_their_own_writes(db_path: Path) -> None:
    box = SQLiteOutbox(db_path)
    await box.open()
    try:
        other: list[list[list[EnqueueStatus]]] = []

        def in_another_loop() -> None:
            async def run() -> list[list[EnqueueStatus]]:
                return list(
                    await asyncio.gather(
                        *(box.enqueue([make_event(f"t{i}")], now=T0) for i in range(20))
                    )
                )

            other.append(asyncio.run(run()))

        thread = threading.Thread(target=in_another_loop)
        thread.start()
        mine = await asyncio.gather(
            *(box.enqueue([make_event(f"m{i}")], now=T0) for i in range(20))
        )
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 10)
        assert mine == [[QUEUED]] * 20 and other == [[[QUEUED]] * 20]
        assert sorted(_queued_ids(db_path)) == sorted(
            [f"t{i}" for i in range(20)] + [f"m{i}" for i in range(20)]
        )
    finally:
        await box.close()
