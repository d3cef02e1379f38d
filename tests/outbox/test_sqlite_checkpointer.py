"""The WAL checkpointed beside the writer (:class:`WalCheckpointer`).

With ``synchronous = FULL`` (the default) a thread of the outbox copies committed WAL
frames into the database file on a connection of its own after each synced batch, so
the checkpoint SQLite runs inside a ``COMMIT`` (holding the write lock, and every
worker's turn) finds little left to copy.  What must hold: the frames reach the
database file without any further commit; commits go on while a checkpoint runs; a
failing checkpoint is logged once per streak and changes nothing else; the outbox
closes as before (the WAL removed with the last connection).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from outbox_data import T0, make_event

from capirelay.outbox import EnqueueStatus, SQLiteOutbox
from capirelay.outbox.sqlite.writer import WalCheckpointer
from waiting import wait_for, wait_for_async

QUEUED = EnqueueStatus.QUEUED

pytestmark = pytest.mark.sqlite_only


@pytest.fixture
async def box(db_path: Path) -> AsyncIterator[SQLiteOutbox]:
    outbox = SQLiteOutbox(db_path)
    await outbox.open()
    yield outbox
    await outbox.close()


def _checkpointer(box: SQLiteOutbox) -> WalCheckpointer:
    writer = box._writer
    assert writer is not None and writer.checkpointer is not None
    return writer.checkpointer


def _ids_in_database_file_alone(db_path: Path, scratch: Path) -> list[str]:
    """The queue as the database file holds it without its WAL: a copy of the file
    alone, opened where no WAL lies beside it."""
    copy = scratch / "alone.db"
    copy.unlink(missing_ok=True)
    shutil.copyfile(db_path, copy)
    with sqlite3.connect(copy) as conn:
        try:
            return [row[0] for row in conn.execute("SELECT event_id FROM queue ORDER BY id")]
        except sqlite3.DatabaseError:  # a copy taken mid-checkpoint; the next one is whole
            return []


async def test_committed_events_reach_the_database_file_without_another_commit(
    db_path: Path, box: SQLiteOutbox, tmp_path: Path
) -> None:
    ids = [f"e{i}" for i in range(40)]
    for event_id in ids:
        assert await box.enqueue([make_event(event_id)], now=T0) == [QUEUED]
    commits = box.commits
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # Nothing else is written: only the checkpointer can move the frames into the file.
    wait_for(
        lambda: _ids_in_database_file_alone(db_path, scratch) == ids,
        what="the committed events in the database file itself",
    )
    assert box.commits == commits
    assert _checkpointer(box).checkpoints >= 1


async def test_commits_and_checkpoints_go_on_while_a_reader_pins_the_wal(
    db_path: Path, box: SQLiteOutbox
) -> None:
    """Another connection's read transaction pins the WAL (a ``PASSIVE`` checkpoint
    copies only up to what it may, and never waits): commits are still answered and the
    checkpoints still run while it holds its snapshot."""
    assert await box.enqueue([make_event("before")], now=T0) == [QUEUED]
    reader = sqlite3.connect(db_path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM queue").fetchone()
        checkpoints = _checkpointer(box).checkpoints
        for index in range(5):
            assert await box.enqueue([make_event(f"during-{index}")], now=T0) == [QUEUED]
        await wait_for_async(
            lambda: _checkpointer(box).checkpoints > checkpoints,
            what="a checkpoint while the reader holds its snapshot",
        )
        reader.execute("COMMIT")
    finally:
        reader.close()
    assert await box.enqueue([make_event("after")], now=T0) == [QUEUED]


def test_a_failing_checkpoint_is_logged_once_per_streak(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpointer = WalCheckpointer(lambda: sqlite3.connect(tmp_path / "x.db"))
    broken = sqlite3.connect(tmp_path / "x.db")
    broken.close()
    working = sqlite3.connect(tmp_path / "x.db")
    working.execute("PRAGMA journal_mode = WAL")
    try:
        with caplog.at_level(logging.INFO, logger="capirelay.outbox"):
            for _ in range(3):
                checkpointer.checkpoint(broken)
            checkpointer.checkpoint(working)
            checkpointer.checkpoint(broken)
    finally:
        working.close()
    messages = [record.getMessage() for record in caplog.records]
    failed = [m for m in messages if "a WAL checkpoint beside the writer failed" in m]
    assert len(failed) == 2  # the first of each streak
    assert "commits checkpoint by themselves until this works again" in failed[0]
    assert sum("WAL checkpoints beside the writer work again" in m for m in messages) == 1
    assert checkpointer.failures == 4 and checkpointer.checkpoints == 1


async def test_close_stops_the_checkpointer_first_and_removes_the_wal(db_path: Path) -> None:
    box = SQLiteOutbox(db_path)
    await box.open()
    assert await box.enqueue([make_event("e1")], now=T0) == [QUEUED]
    checkpointer = _checkpointer(box)
    await box.close()
    assert not checkpointer.is_alive()
    assert not db_path.with_name(db_path.name + "-wal").exists()


async def test_only_with_the_sync_outside_the_lock(db_path: Path) -> None:
    """``NORMAL`` and ``EXTRA`` commit as SQLite does, checkpoints included."""
    box = SQLiteOutbox(db_path, synchronous="NORMAL")
    await box.open()
    try:
        assert box._writer is not None and box._writer.checkpointer is None
        assert "capirelay-outbox-checkpoint" not in {t.name for t in threading.enumerate()}
    finally:
        await box.close()
