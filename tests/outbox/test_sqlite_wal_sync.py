"""``synchronous = FULL`` done outside the write lock (:class:`WalSyncer`).

The writer connection commits with ``NORMAL`` (no fsync inside ``COMMIT``, so the write
lock and the writers' turn are not held across the disk) and a second thread syncs the
WAL file before any caller of the commit is answered.  What must not change: no caller
hears about a write before a sync that began after its ``COMMIT``; a failed sync fails
its callers as a failed ``COMMIT`` would; closing answers everything that committed.
The sync is made to wait (a gate in front of ``fdatasync``) to see what happens between
the commit and the sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from outbox_data import T0, make_event

from capirelay.outbox import EnqueueStatus, SQLiteOutbox, StorageUnavailable
from capirelay.outbox.sqlite import writer as writer_module
from capirelay.outbox.sqlite.writer import GroupCommitWriter, WalSyncer, WriteOp
from waiting import wait_for, wait_for_async

QUEUED, DUPLICATE = EnqueueStatus.QUEUED, EnqueueStatus.DUPLICATE

pytestmark = pytest.mark.sqlite_only


class GatedSync:
    """Stands in front of the real ``fdatasync``: counts the calls and, while closed,
    holds each one until the test opens it (or fails it with ``fail``)."""

    def __init__(self) -> None:
        self.real = writer_module._fdatasync
        self.open = threading.Event()
        self.open.set()
        self.calls = 0
        self.waiting = 0
        self.fail: BaseException | None = None
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self._lock:
            self.waiting += 1
        if not self.open.wait(30):
            raise AssertionError("the test never opened the sync gate")
        with self._lock:
            self.waiting -= 1
            self.calls += 1
            fail, self.fail = self.fail, None
        if fail is not None:
            raise fail
        self.real(fd)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedSync]:
    gated = GatedSync()
    monkeypatch.setattr(writer_module, "_fdatasync", gated)
    yield gated
    gated.open.set()


def _syncer(box: SQLiteOutbox) -> WalSyncer:
    writer = box._writer
    assert writer is not None and writer._syncer is not None
    return writer._syncer


@pytest.fixture
async def box(db_path: Path) -> AsyncIterator[SQLiteOutbox]:
    """An open outbox; name it before ``gate`` so the gate opens before it closes."""
    outbox = SQLiteOutbox(db_path)
    await outbox.open()
    yield outbox
    await outbox.close()


async def _held(box: SQLiteOutbox, gate: GatedSync, event_id: str) -> asyncio.Future[Any]:
    """An enqueue of ``event_id`` whose sync has started and is held at the gate."""
    gate.open.clear()
    call = asyncio.ensure_future(box.enqueue([make_event(event_id)], now=T0))
    await wait_for_async(lambda: gate.waiting == 1, what="the sync to start")
    return call


async def _committed(box: SQLiteOutbox, event_id: str) -> asyncio.Future[Any]:
    """An enqueue of ``event_id`` that has committed (its answer may still wait)."""
    commits = box.commits
    call = asyncio.ensure_future(box.enqueue([make_event(event_id)], now=T0))
    await wait_for_async(lambda: box.commits == commits + 1, what=f"the commit of {event_id}")
    return call


def _visible_ids(db_path: Path) -> list[str]:
    """What another connection sees (committed, synced or not)."""
    with sqlite3.connect(db_path) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM queue ORDER BY id")]


async def test_a_commit_is_answered_only_after_the_wal_is_synced(
    db_path: Path, box: SQLiteOutbox, gate: GatedSync
) -> None:
    call = await _held(box, gate, "e1")
    # The row is committed (another connection sees it) while the sync waits, and the
    # caller has no answer yet.
    assert _visible_ids(db_path) == ["e1"]
    assert not call.done()
    gate.open.set()
    assert await asyncio.wait_for(call, 10) == [QUEUED]


async def test_one_sync_covers_the_commits_made_while_the_previous_one_ran(
    db_path: Path, box: SQLiteOutbox, gate: GatedSync
) -> None:
    first = await _held(box, gate, "first")
    # Three more groups commit one after another while the first sync is held: the
    # writer does not wait for the disk.
    later = [await _committed(box, f"e{i}") for i in range(3)]
    assert _visible_ids(db_path) == ["first", "e0", "e1", "e2"]
    assert not first.done() and not any(call.done() for call in later)
    calls_before = gate.calls
    gate.open.set()
    assert await asyncio.wait_for(asyncio.gather(first, *later), 10) == [[QUEUED]] * 4
    # The held sync, then ONE for the three commits queued behind it.
    assert gate.calls - calls_before == 2


async def test_a_duplicate_waits_for_the_sync_that_covers_the_key_it_found(
    box: SQLiteOutbox, gate: GatedSync
) -> None:
    # The second call's answer rests on the first's commit: it must not be told
    # "duplicate" before that commit is on disk.
    first = await _held(box, gate, "same")
    second = await _committed(box, "same")
    assert not second.done()
    gate.open.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 10) == [[QUEUED], [DUPLICATE]]


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.EIO, os.strerror(errno.EIO)), ValueError("a bug in the sync path")],
    ids=["EIO", "unexpected"],
)
async def test_a_failed_sync_is_final_nothing_after_it_is_acknowledged(
    db_path: Path,
    box: SQLiteOutbox,
    gate: GatedSync,
    caplog: pytest.LogCaptureFixture,
    failure: BaseException,
) -> None:
    # After a failed sync the committed frames may be gone from the disk while still
    # readable (Linux marks the pages clean): a later answer resting on them, or a later
    # commit behind them in the WAL, could be taken back by a power loss.  So every
    # caller from the failed sync on gets StorageUnavailable, and readiness goes down.
    failing = await _held(box, gate, "e1")
    behind = await _committed(box, "e2")
    commits = box.commits
    gate.fail = failure
    gate.open.set()
    for call in (failing, behind):
        with pytest.raises(StorageUnavailable, match="sync of the WAL failed"):
            await asyncio.wait_for(call, 10)
    assert "restart the gateway" in caplog.text
    # Nothing more is committed or acknowledged, a retry of e1 included.
    with pytest.raises(StorageUnavailable, match="restart the gateway"):
        await box.enqueue([make_event("e1"), make_event("e3")], now=T0)
    assert box.commits == commits
    assert _visible_ids(db_path) == ["e1", "e2"]
    assert await box.ping() is False


async def test_a_stopped_sync_thread_fails_callers_instead_of_leaving_them_waiting(
    box: SQLiteOutbox,
) -> None:
    syncer = _syncer(box)
    syncer.stop()
    syncer.join(10)
    with pytest.raises(StorageUnavailable, match="sync thread stopped"):
        await asyncio.wait_for(box.enqueue([make_event("e1")], now=T0), 10)
    assert await box.ping() is False


async def test_close_answers_every_commit_after_its_sync(db_path: Path, gate: GatedSync) -> None:
    box = SQLiteOutbox(db_path)
    await box.open()
    gate.open.clear()
    calls = [asyncio.ensure_future(box.enqueue([make_event(f"e{i}")], now=T0)) for i in range(5)]
    await wait_for_async(lambda: gate.waiting == 1, what="the sync to start")
    syncer = _syncer(box)
    stop_asked = threading.Event()
    real_stop = syncer.stop

    def stop() -> None:
        stop_asked.set()
        real_stop()

    syncer.stop = stop  # type: ignore[method-assign]
    closing = asyncio.ensure_future(box.close())
    # The writer has run everything and handed over its stop; the sync still holds the
    # answers, and close waits for them.
    await wait_for_async(stop_asked.is_set, what="the writer to stop the syncer")
    assert not closing.done() and not any(call.done() for call in calls)
    gate.open.set()
    await asyncio.wait_for(closing, 10)
    assert await asyncio.gather(*calls) == [[QUEUED]] * 5


@pytest.mark.parametrize(
    ("asked", "connection", "syncer"),
    [("FULL", 1, True), ("NORMAL", 1, False), ("EXTRA", 3, False)],
)
async def test_only_full_moves_the_sync_out_of_the_commit(
    db_path: Path, asked: str, connection: int, syncer: bool
) -> None:
    box = SQLiteOutbox(db_path, synchronous=asked)
    await box.open()
    try:
        writer = box._writer
        assert writer is not None
        assert (writer._syncer is not None) is syncer
        got = await box._write(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
        assert got == connection  # FULL: NORMAL on the connection, the syncer does the rest
    finally:
        await box.close()


def _connect_rollback_journal(db_path: Path) -> Callable[[], sqlite3.Connection]:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db_path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    return connect


def test_without_wal_sqlites_own_full_stays(db_path: Path) -> None:
    writer = GroupCommitWriter(_connect_rollback_journal(db_path), 8, sync_outside_lock=True)
    writer.start()
    try:
        writer.ready.result(timeout=10)
        assert writer._syncer is None
    finally:
        writer.stop()
        writer.join(10)


def test_a_wal_file_removed_under_the_syncer_fails_its_sync(tmp_path: Path) -> None:
    # SQLite never replaces the WAL while a connection is open; if something else
    # removes it, syncing the old file would prove nothing.
    database = tmp_path / "x.db"
    conn = sqlite3.connect(database, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (v INTEGER)")
    syncer = WalSyncer(tmp_path / "x.db-wal")
    try:
        syncer.sync()
        conn.close()  # the last connection: SQLite checkpoints and removes the WAL
        wait_for(lambda: not (tmp_path / "x.db-wal").exists(), what="the WAL to be removed")
        with pytest.raises(OSError, match="WAL file was removed"):
            syncer.sync()
        assert syncer.syncs == 1
    finally:
        syncer.close()


async def test_two_processes_answers_wait_for_the_sync_covering_the_key_they_found(
    db_path: Path, gate: GatedSync
) -> None:
    # Two outboxes on one file (two `serve --workers` processes): the second finds the
    # first's key and may only say "duplicate" once a sync covers both commits.
    first_box, second_box = SQLiteOutbox(db_path), SQLiteOutbox(db_path)
    await first_box.open()
    await second_box.open()
    try:
        gate.open.clear()
        first = asyncio.ensure_future(first_box.enqueue([make_event("same")], now=T0))
        await wait_for_async(lambda: gate.waiting == 1, what="the first sync to start")
        second = asyncio.ensure_future(second_box.enqueue([make_event("same")], now=T0))
        await wait_for_async(lambda: gate.waiting == 2, what="the second sync to start")
        assert second_box.commits >= 1 and not first.done() and not second.done()
        gate.open.set()
        assert await asyncio.wait_for(asyncio.gather(first, second), 10) == [
            [QUEUED],
            [DUPLICATE],
        ]
    finally:
        gate.open.set()
        await first_box.close()
        await second_box.close()


async def test_a_checkpoint_that_truncates_the_wal_during_a_sync_loses_nothing(
    db_path: Path, box: SQLiteOutbox, gate: GatedSync
) -> None:
    first = await _held(box, gate, "e1")
    with sqlite3.connect(db_path, isolation_level=None) as other:
        busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0 and (db_path.with_name(db_path.name + "-wal")).stat().st_size == 0
    second = await _committed(box, "e2")
    gate.open.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 10) == [[QUEUED]] * 2
    assert _syncer(box).failure is None
    await box.close()
    assert _visible_ids(db_path) == ["e1", "e2"]


def _open_wal_descriptors(db_path: Path) -> list[str]:
    wal = str(db_path.with_name(db_path.name + "-wal"))
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [link for link in links if link.startswith(wal)]


async def test_a_sync_that_fails_at_start_fails_open_and_leaves_nothing_open(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int) -> None:
        raise ValueError("not a sync")

    monkeypatch.setattr(writer_module, "_fdatasync", broken)
    box = SQLiteOutbox(db_path)
    with pytest.raises(StorageUnavailable, match="WAL sync failed to start"):
        await asyncio.wait_for(box.open(), 10)
    assert _open_wal_descriptors(db_path) == []


async def test_what_reaches_an_ended_sync_thread_is_failed_at_once(box: SQLiteOutbox) -> None:
    syncer = _syncer(box)
    loop = asyncio.get_running_loop()
    syncer.stop()
    syncer.join(10)
    late = loop.create_future()
    syncer.put([(WriteOp(lambda conn: None, loop, late), "ok", None)])
    with pytest.raises(StorageUnavailable, match="closed before this write"):
        await asyncio.wait_for(late, 10)
