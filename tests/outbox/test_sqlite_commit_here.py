"""An event loop's writes committed on the loop's own thread when nothing has to wait.

:meth:`GroupCommitWriter.flush` commits the writes of one iteration of a loop itself
(:meth:`GroupCommitWriter._commit_here`) when the writers' turn and SQLite's write lock
are free and no writer of another process waits for the turn; otherwise they go to the
writer thread as before.  What must not change: a caller is answered only after a sync
of the WAL covers its commit, a group that fails is run again by the writer thread (each
write alone, each with its own error) with nothing of the first try left, and a writer
waiting in another process is not overtaken.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from outbox_data import T0, make_event

from capirelay.outbox import EnqueueStatus, SQLiteOutbox
from capirelay.outbox.sqlite import writer as writer_module
from capirelay.outbox.sqlite.writer import COMMIT_HERE_MAX_ROWS, GroupCommitWriter
from waiting import wait_for_async

pytestmark = pytest.mark.sqlite_only


@pytest.fixture
async def box(db_path: Path) -> AsyncIterator[SQLiteOutbox]:
    outbox = SQLiteOutbox(db_path)
    await outbox.open()
    try:
        yield outbox
    finally:
        await outbox.close()


def _writer(box: SQLiteOutbox) -> GroupCommitWriter:
    writer = box._writer
    assert writer is not None
    return writer


def _thread_id(conn: sqlite3.Connection) -> int:
    conn.execute("SELECT 1").fetchone()
    return threading.get_ident()


def _turn(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + "-writer")


async def test_a_free_turn_commits_the_iterations_writes_here_answered_after_the_sync(
    box: SQLiteOutbox, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _writer(box)
    gate, syncing = threading.Event(), threading.Event()
    real = writer_module._fdatasync

    def held_sync(fd: int) -> None:
        syncing.set()
        gate.wait(30)
        real(fd)

    monkeypatch.setattr(writer_module, "_fdatasync", held_sync)
    here = writer.commits_here
    try:
        calls = asyncio.gather(*(box._write(_thread_id, rows=1) for _ in range(5)))
        await asyncio.get_running_loop().run_in_executor(None, syncing.wait, 10)
        # Committed (another connection reads it) and not answered until the sync is done.
        assert writer.commits_here == here + 1
        assert not calls.done()
        gate.set()
        assert await asyncio.wait_for(calls, 10) == [threading.get_ident()] * 5
    finally:
        gate.set()
    # Enqueues too, dedup included: one commit, here.
    statuses = await asyncio.gather(
        *(box.enqueue([make_event(i)], now=T0) for i in ("a", "b", "a"))
    )
    assert statuses == [[EnqueueStatus.QUEUED], [EnqueueStatus.QUEUED], [EnqueueStatus.DUPLICATE]]
    assert writer.commits_here == here + 2


async def test_a_writer_of_another_process_waiting_for_the_turn_goes_first(
    box: SQLiteOutbox, db_path: Path
) -> None:
    """A waiting writer marks itself with a shared lock on byte 0 of the turn file
    (``GroupCommitWriter._turn``); POSIX record locks belong to a process, so the
    waiting writer is played by a child process."""
    writer = _writer(box)
    script = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(_turn(db_path))!r}, os.O_RDWR)\n"
        "fcntl.lockf(fd, fcntl.LOCK_SH, 1, 0)\n"
        "print('waiting', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "waiting"
        here = writer.commits_here
        ran_on = await asyncio.gather(*(box._write(_thread_id, rows=1) for _ in range(3)))
        assert ran_on == [writer.ident] * 3  # handed to the writer thread: a writer waits
        assert writer.commits_here == here
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    # Nobody waits any more: the next iteration's writes are committed here.
    assert (
        await asyncio.gather(*(box._write(_thread_id, rows=1) for _ in range(3)))
        == [threading.get_ident()] * 3
    )
    assert writer.commits_here == here + 1


async def test_sqlites_lock_held_by_another_program_sends_the_writes_to_the_writer_thread(
    box: SQLiteOutbox, db_path: Path
) -> None:
    """The turn file is free, SQLite's write lock is not (a program that does not take
    turns): the loop does not wait for it, the writer thread does."""
    writer = _writer(box)
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        call = asyncio.ensure_future(box._write(_thread_id, rows=1))
        await wait_for_async(
            lambda: not writer._batches and writer._inbox.empty() and writer._conn_lock.locked(),
            what="the writer thread took the write and waits for SQLite's lock",
        )
        assert not call.done()
        other.execute("COMMIT")
        assert await asyncio.wait_for(call, 10) == writer.ident
    finally:
        other.close()
    # The turn was let go: another writer of the file can take it.
    fd = os.open(_turn(db_path), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


async def test_a_group_failing_here_is_run_again_by_the_writer_thread_each_write_alone(
    box: SQLiteOutbox, db_path: Path
) -> None:
    writer = _writer(box)
    here, commits = writer.commits_here, box.commits

    def good(conn: sqlite3.Connection) -> int:
        conn.execute("CREATE TABLE IF NOT EXISTS marks (x)")
        conn.execute("INSERT INTO marks VALUES (1)")
        return threading.get_ident()

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO marks VALUES (2)")
        raise RuntimeError("this write fails")

    results = await asyncio.gather(
        box._write(good, rows=1), box._write(bad, rows=1), return_exceptions=True
    )
    assert results[0] == writer.ident  # committed alone, by the writer thread
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "this write fails"
    assert (writer.commits_here, box.commits) == (here, commits + 1)
    with sqlite3.connect(db_path) as conn:  # nothing of the failed tries stayed behind
        assert conn.execute("SELECT x FROM marks").fetchall() == [(1,)]


async def test_only_small_writes_are_committed_here(box: SQLiteOutbox) -> None:
    """Leases, acks, housekeeping (no ``rows``) and iterations over
    ``COMMIT_HERE_MAX_ROWS`` (a 100-event batch) keep their SQLite work on the writer
    thread, beside the loop, instead of stalling it."""
    writer = _writer(box)
    here = writer.commits_here
    assert await box._write(_thread_id) == writer.ident
    over = await asyncio.gather(
        *(box._write(_thread_id, rows=1) for _ in range(COMMIT_HERE_MAX_ROWS + 1))
    )
    assert over == [writer.ident] * (COMMIT_HERE_MAX_ROWS + 1)
    batch = [make_event(f"batch-{i}") for i in range(100)]
    assert await box.enqueue(batch, now=T0) == [EnqueueStatus.QUEUED] * 100
    assert writer.commits_here == here
    at_most = await asyncio.gather(
        *(box._write(_thread_id, rows=1) for _ in range(COMMIT_HERE_MAX_ROWS))
    )
    assert at_most == [threading.get_ident()] * COMMIT_HERE_MAX_ROWS
    assert writer.commits_here == here + 1
