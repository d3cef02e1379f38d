"""The embedded outbox: one SQLite file in WAL mode, written by one group-committing thread.

Why this shape:

* **One writer thread, group commit.**  SQLite allows one writer at a time and
  a durable commit costs an fsync.  Every state change (enqueue, lease, ack,
  reschedule, dead-letter ...) is a small function handed to the writer
  thread; the thread takes everything waiting in its inbox, runs it in ONE
  transaction and commits once, then resolves each caller's future.  Many
  concurrent HTTP requests therefore share one fsync, and a caller only hears
  "done" after its data is on disk (``synchronous=FULL`` by default).  With
  ``FULL`` the fsync is done after the commit has let go of the write lock, by a
  second thread (:class:`~capirelay.outbox.sqlite.writer.WalSyncer`) that answers
  the callers once the WAL is synced: the same guarantee, while the writer (and
  the other ``serve --workers`` processes) go on with the next group.  The writes
  an event loop makes in one iteration reach the thread as one inbox item
  (:meth:`GroupCommitWriter.submit_soon`): one wake-up per iteration, not per write.
* **Reads on their own connection** (one reader thread), so stats and DLQ
  listings never wait behind writes; WAL gives them a consistent snapshot.
* **Indexes that keep a million-row backlog cheap.**  A row is *ready*,
  *waiting* (backoff) or *leased* (see ``migrations/0001_outbox.sql``).  A lease first
  promotes the pixel's waiting/leased rows whose time has come (partial index
  on rows that are not ready), then reads ready rows in deadline order from
  ``(pixel_id, state, deadline)`` and stops after ``limit`` rows: earliest
  deadline first with no sort and nothing loaded beyond the batch.
* **Storage failures are an answer, not a crash.**  Disk full or an I/O error
  becomes :class:`StorageUnavailable` for the callers of that transaction
  (ingest answers 503 and acknowledges nothing); the writer thread keeps
  running and succeeds again once space returns.  When a grouped transaction
  fails, each operation is retried alone, so an ``ack`` (which frees space)
  still succeeds while an ``enqueue`` (which needs space) fails.

Every SQL statement that moves rows takes its ids as one JSON array through
``json_each`` so a 1,000-event ack is one statement, not a thousand; enqueue
claims all of a call's dedup keys with one set-based upsert the same way, and the
consecutive enqueues of one commit group share one upsert and one insert.  The
writers of one file (``serve --workers N``) take turns at its write lock
(:meth:`GroupCommitWriter._turn`).

A lease stamps its rows with a random lease id; settle calls that pass it touch
only rows still carrying it (see :mod:`capirelay.outbox.base`).  Closing refuses
new writes with :class:`StorageUnavailable` and fails any write the thread can
no longer run, so no caller waits forever on a stopped writer.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from capirelay.outbox._rows import (
    DLQ_FILTER_FIELDS,
    dead_letter_from_row,
    dlq_filter_values,
    dlq_group,
    leased_from_row,
    queue_stats,
    require_purge_target,
)
from capirelay.outbox.base import (
    DEDUP_EXPIRY_CHUNK,
    DEDUP_WINDOW_SECONDS,
    PROMOTE_FACTOR,
    Attempt,
    AuditRecord,
    DeadLetter,
    DeadLetterReason,
    DLQFilter,
    DLQGroup,
    EnqueueStatus,
    LeasedEvent,
    NewEvent,
    Outbox,
    OutboxViews,
    QueueGroup,
    QueueStats,
    RequeueResult,
    StorageUnavailable,
)
from capirelay.outbox.sqlite._statements import (
    MIGRATIONS,
    NO_LEASE,
    QUERIES,
    claim_keys,
    claim_keys_at,
    claim_orders,
    insert_queued,
    insert_queued_at,
)
from capirelay.outbox.sqlite.receipts import SQLiteReceipts, insert_dead_letter_receipts
from capirelay.outbox.sqlite.writer import (
    GroupCommitWriter,
    MergeFn,
    Reader,
    WriteOp,
    connect,
    hold_open_mark,
    migrate,
)

__all__ = ["MIGRATIONS", "QUERIES", "SQLiteOutbox", "migrate"]

T = TypeVar("T")

READY: Final = 0
WAITING: Final = 1
LEASED: Final = 2

# Operations per grouped transaction; bounds how long one commit holds callers.
MAX_GROUP: Final = 1024
SYNCHRONOUS_MODES: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})


_QUEUED: Final = EnqueueStatus.QUEUED
_DUPLICATE: Final = EnqueueStatus.DUPLICATE


def _enqueue_together(conn: sqlite3.Connection, ops: Sequence[WriteOp]) -> list[Any]:
    """The ``enqueue`` calls (without order keys) of one commit group as ONE dedup claim
    and ONE insert (in pieces of at most MAX_PIECE rows) instead of two statements per
    call.  The same outcome as running them in turn: the keys are claimed in call order,
    each with its own call's clock reading, under the write lock this transaction holds,
    so a key two calls share is queued by the first and a duplicate for the second."""
    rows: list[tuple[NewEvent, float]] = []
    for op in ops:
        batch, now = op.data
        rows.extend((event, now) for event in batch)
    claimed = claim_keys_at(conn, [(e.pixel_id, e.event_name, e.event_id, now) for e, now in rows])
    insert_queued_at(conn, [row for row, ok in zip(rows, claimed, strict=True) if ok])
    results: list[Any] = []
    start = 0
    for op in ops:
        end = start + len(op.data[0])
        results.append([_QUEUED if ok else _DUPLICATE for ok in claimed[start:end]])
        start = end
    return results


def _ids_json(ids: Sequence[int]) -> bytes:
    return orjson.dumps([int(i) for i in ids])


def _new_lease_id() -> int:
    return NO_LEASE + 1 + secrets.randbelow((1 << 63) - NO_LEASE - 1)


def _lease_number(lease_id: str) -> int:
    """This backend's lease ids are decimal integers; anything else matches no row."""
    return int(lease_id) if lease_id.isdigit() else -1


def _held_ids(conn: sqlite3.Connection, id_list: bytes, lease_id: str) -> str:
    """The ids a settle call may touch: those still under ``lease_id``."""
    held: str = conn.execute(QUERIES["held_ids"], (id_list, _lease_number(lease_id))).fetchone()[0]
    return held


def _dlq_where(flt: DLQFilter | None) -> tuple[str, list[Any]]:
    values = dlq_filter_values(flt)
    terms = [
        (f"{column} {op} ?", values[name])
        for name, column, op in DLQ_FILTER_FIELDS
        if values[name] is not None
    ]
    where = f"WHERE {' AND '.join(clause for clause, _ in terms)}" if terms else ""
    return where, [value for _, value in terms]


def _dead_letter_from_row(row: tuple[Any, ...]) -> DeadLetter:
    return dead_letter_from_row(row, orjson.loads)


def _distinct_pixels(conn: sqlite3.Connection) -> list[str]:
    pixels: list[str] = []
    row = conn.execute(QUERIES["next_pixel"], ("",)).fetchone()
    while row is not None:
        pixels.append(row[0])
        row = conn.execute(QUERIES["next_pixel"], (row[0],)).fetchone()
    return pixels


class SQLiteOutbox(SQLiteReceipts, Outbox, OutboxViews):
    """The :class:`Outbox` on one SQLite file (WAL, group commit, ``synchronous`` as configured).

    ``max_bytes`` caps the database size (a storage quota): past it, writes fail
    with :class:`StorageUnavailable` exactly as on a full disk.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        max_bytes: int | None = None,
        max_group: int = MAX_GROUP,
    ) -> None:
        mode = synchronous.upper()
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_MODES)}")
        if str(path) == ":memory:" or not str(path):
            raise ValueError("the outbox needs a file: an in-memory database is not durable")
        self.path = Path(path)
        self.synchronous = mode
        self.busy_timeout = busy_timeout
        self.max_bytes = max_bytes
        self._max_group = max_group
        self._writer: GroupCommitWriter | None = None
        self._reader: Reader | None = None
        self._open_mark: int | None = None  # hold_open_mark's descriptor while open

    # ------------------------------------------------------------- lifecycle

    def _connect_writer(self) -> sqlite3.Connection:
        conn = connect(self.path, synchronous=self.synchronous, busy_timeout=self.busy_timeout)
        if self.max_bytes is not None:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(1, self.max_bytes // page_size)}")
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        return connect(self.path, synchronous=self.synchronous, busy_timeout=self.busy_timeout)

    async def open(self) -> None:
        if self._writer is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        turn_file = self.path.with_name(self.path.name + "-writer")
        mark = hold_open_mark(turn_file)  # refuses while capirelay migrate copies the file
        writer = GroupCommitWriter(
            self._connect_writer,
            self._max_group,
            self.busy_timeout,
            turn_file=turn_file,
            sync_outside_lock=self.synchronous == "FULL",
        )
        writer.start()
        try:
            await asyncio.wrap_future(writer.ready)
        except BaseException:
            if mark is not None:
                os.close(mark)
            raise
        self._open_mark = mark
        self._writer = writer
        self._reader = Reader(self._connect_reader)

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        if writer is not None:
            # This iteration's writes go in first; stop is queued behind every pending
            # write, so those finish first.
            writer.flush(asyncio.get_running_loop())
            writer.stop()
            await asyncio.get_running_loop().run_in_executor(None, writer.join)
        if reader is not None:
            await reader.close()
        mark, self._open_mark = self._open_mark, None
        if mark is not None:
            os.close(mark)

    @property
    def commits(self) -> int:
        """Transactions committed by the writer (group commit: usually far fewer than calls)."""
        return self._writer.commits if self._writer else 0

    @property
    def write_operations(self) -> int:
        """Write calls committed so far."""
        return self._writer.operations if self._writer else 0

    async def _write(
        self, fn: Callable[[sqlite3.Connection], T], merge: MergeFn | None = None, data: Any = None
    ) -> T:
        writer = self._writer
        if writer is None or not writer.is_alive():
            raise StorageUnavailable("the outbox is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        # With the other writes of this loop iteration: one hand-off to the writer for all.
        writer.submit_soon(WriteOp(fn, loop, future, merge, data))
        return await future

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            raise StorageUnavailable("the outbox is not open")
        result: T = await self._reader.read(fn)
        return result

    async def ping(self) -> bool:
        writer = self._writer
        if writer is None or not writer.is_alive() or writer.failure is not None:
            return False
        try:
            return bool(await self._read(lambda c: c.execute(QUERIES["ping"]).fetchone()[0]))
        except StorageUnavailable:
            return False

    # ----------------------------------------------------------------- queue

    async def enqueue(self, events: Sequence[NewEvent], *, now: float) -> list[EnqueueStatus]:
        if not events:
            return []
        batch = tuple(events)
        keys = [(e.pixel_id, e.event_name, e.event_id) for e in batch]

        def run(conn: sqlite3.Connection) -> list[EnqueueStatus]:
            if any(e.order_key is not None for e in batch):
                new_order = claim_orders(conn, batch, now)
                picked = [i for i, ok in enumerate(new_order) if ok]
                claimed = [False] * len(batch)
                for i, ok in zip(
                    picked, claim_keys(conn, [keys[i] for i in picked], now), strict=True
                ):
                    claimed[i] = ok
            else:
                claimed = claim_keys(conn, keys, now)
            insert_queued(conn, [e for e, ok in zip(batch, claimed, strict=True) if ok], now)
            return [_QUEUED if ok else _DUPLICATE for ok in claimed]

        if any(e.order_key is not None for e in batch):
            return await self._write(run)
        # No order keys: consecutive enqueues of one commit group claim and insert together.
        return await self._write(run, _enqueue_together, (batch, now))

    async def holds_claim(self, event: NewEvent, *, now: float) -> bool:
        params = (event.pixel_id, event.event_name, event.event_id, now, event.order_key)
        row = await self._read(lambda c: c.execute(QUERIES["holds_claim"], params).fetchone())
        return bool(row[0])

    async def lease(
        self, pixel_id: str, *, limit: int, lease_seconds: float, now: float
    ) -> list[LeasedEvent]:
        if limit <= 0:
            return []

        lease_number = _new_lease_id()
        lease_id = str(lease_number)

        def run(conn: sqlite3.Connection) -> list[LeasedEvent]:
            conn.execute(QUERIES["promote_due"], (pixel_id, now, limit * PROMOTE_FACTOR))
            params = (now + lease_seconds, lease_number, pixel_id, limit)
            rows = conn.execute(QUERIES["lease"], params).fetchall()
            leased = [leased_from_row(row, lease_id) for row in rows]
            return sorted(leased, key=lambda e: (e.deadline, e.id))

        return await self._write(run)

    async def extend_lease(
        self, ids: Sequence[int], *, until: float, now: float, lease_id: str
    ) -> list[int]:
        if until <= now:
            raise ValueError("a lease extension must end after now")
        if not ids:
            return []
        id_list = _ids_json(ids)

        def run(conn: sqlite3.Connection) -> list[int]:
            params = (until, id_list, _lease_number(lease_id))
            rows = conn.execute(QUERIES["extend_lease"], params).fetchall()
            return sorted(row[0] for row in rows)

        return await self._write(run)

    async def ack(self, ids: Sequence[int], *, now: float, lease_id: str) -> None:
        if ids:
            requested = _ids_json(ids)

            def run(conn: sqlite3.Connection) -> None:
                id_list = _held_ids(conn, requested, lease_id)
                conn.execute(QUERIES["unpin_dedup_of_queued"], (id_list,))
                conn.execute(QUERIES["ack"], (id_list,))

            await self._write(run)

    async def reschedule(
        self,
        ids: Sequence[int],
        *,
        next_attempt_at: float,
        attempt: Attempt,
        lease_id: str,
    ) -> None:
        if not ids:
            return
        attempt_json = orjson.dumps(attempt.to_dict()).decode()
        id_list = _ids_json(ids)

        def run(conn: sqlite3.Connection) -> None:
            held = _held_ids(conn, id_list, lease_id)
            conn.execute(QUERIES["reschedule"], (next_attempt_at, attempt_json, held))

        await self._write(run)

    async def release(self, ids: Sequence[int], *, lease_id: str) -> None:
        if ids:
            id_list = _ids_json(ids)
            await self._write(
                lambda c: c.execute(QUERIES["release"], (_held_ids(c, id_list, lease_id),))
            )

    async def dead_letter(
        self,
        ids: Sequence[int],
        *,
        reason: DeadLetterReason,
        attempt: Attempt | None,
        now: float,
        lease_id: str,
    ) -> None:
        if not ids:
            return
        requested = _ids_json(ids)
        attempt_json = orjson.dumps(attempt.to_dict()).decode() if attempt else None

        def run(conn: sqlite3.Connection) -> None:
            id_list = _held_ids(conn, requested, lease_id)
            insert_dead_letter_receipts(conn, id_list, str(reason), attempt_json, now)
            conn.execute(
                QUERIES["move_to_dlq"],
                (str(reason), attempt_json, attempt_json, attempt_json, now, id_list),
            )
            conn.execute(QUERIES["forget_dedup_of_queued"], (id_list,))
            conn.execute(QUERIES["ack"], (id_list,))

        await self._write(run)

    async def due_pixels(self, *, now: float) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            return [p for p in _distinct_pixels(conn) if _pixel_due(conn, p, now)]

        return await self._read(run)

    async def next_due_at(self, pixel_id: str | None = None) -> float | None:
        def run(conn: sqlite3.Connection) -> float | None:
            pixels = [pixel_id] if pixel_id is not None else _distinct_pixels(conn)
            times = [t for p in pixels if (t := _pixel_next_due(conn, p)) is not None]
            return min(times) if times else None

        return await self._read(run)

    async def stats(self, *, now: float, max_age: float = 0.0) -> QueueStats:
        return await self._read(_queue_stats)

    async def expire_dedup(self, *, now: float) -> int:
        cutoff = now - DEDUP_WINDOW_SECONDS
        # Chunked so a large expiry never holds the writer (and ingest) for long; each
        # chunk starts after the last key of the one before (queries.sql).
        after: tuple[Any, ...] = (float("-inf"), "", "", "")

        def chunk(
            c: sqlite3.Connection, start: tuple[Any, ...]
        ) -> tuple[int, tuple[Any, ...] | None]:
            # In one write transaction: the chunk's last key, then the chunk's delete.
            last = c.execute(
                QUERIES["expire_dedup_last"], (cutoff, *start, DEDUP_EXPIRY_CHUNK - 1)
            ).fetchone()
            deleted = c.execute(
                QUERIES["expire_dedup"], (cutoff, *start, DEDUP_EXPIRY_CHUNK)
            ).rowcount
            return deleted, last

        removed = 0
        while True:
            deleted, last = await self._write(functools.partial(chunk, start=after))
            removed += deleted
            if last is None:
                return removed
            after = tuple(last)

    async def prune_order_ledger(
        self, *, now: float, retention_seconds: float, max_entries: int
    ) -> int:
        cutoff = now - retention_seconds
        beyond_cap = await self._read(
            lambda c: c.execute(QUERIES["order_ledger_cap"], (max(0, max_entries),)).fetchone()
        )
        if beyond_cap is not None:
            cutoff = max(cutoff, float(beyond_cap[0]))
        removed = 0
        while True:  # chunked, like expire_dedup: never holds the writer (and ingest) for long
            count = await self._write(
                lambda c: (
                    c.execute(QUERIES["prune_order_ledger"], (cutoff, DEDUP_EXPIRY_CHUNK)).rowcount
                )
            )
            removed += count
            if count < DEDUP_EXPIRY_CHUNK:
                return removed

    async def order_ledger_size(self) -> int:
        count: int = await self._read(
            lambda c: c.execute(QUERIES["order_ledger_size"]).fetchone()[0]
        )
        return count

    # ------------------------------------------------------------ dead letters

    async def dlq_list(
        self, flt: DLQFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        where, params = _dlq_where(flt)
        sql = QUERIES["dlq_list"].replace("{where}", where)
        rows = await self._read(lambda c: c.execute(sql, (*params, limit, offset)).fetchall())
        return [_dead_letter_from_row(r) for r in rows]

    async def dlq_get(self, dlq_id: int) -> DeadLetter | None:
        row = await self._read(lambda c: c.execute(QUERIES["dlq_get"], (dlq_id,)).fetchone())
        return _dead_letter_from_row(row) if row else None

    async def dlq_requeue(self, ids: Sequence[int], *, now: float) -> RequeueResult:
        if not ids:
            return RequeueResult()
        id_list = _ids_json(ids)

        def run(conn: sqlite3.Connection) -> RequeueResult:
            letters = conn.execute(QUERIES["dlq_keys"], (id_list,)).fetchall()
            claimed = claim_keys(conn, [(p, n, e) for _, p, n, e in letters], now)
            result = RequeueResult()
            for (dlq_id, *_), ok in zip(letters, claimed, strict=True):
                (result.requeued if ok else result.duplicate).append(dlq_id)
            moving = _ids_json(result.requeued)
            conn.execute(QUERIES["requeue_from_dlq"], (now, now, moving))
            conn.execute(QUERIES["dlq_purge_ids"], (moving,))
            return result

        return await self._write(run)

    async def dlq_purge(
        self, ids: Sequence[int] | None = None, flt: DLQFilter | None = None
    ) -> int:
        require_purge_target(ids, flt)
        if ids is not None:
            id_list = _ids_json(ids)
            return await self._write(
                lambda c: int(c.execute(QUERIES["dlq_purge_ids"], (id_list,)).rowcount)
            )
        where, params = _dlq_where(flt)
        sql = QUERIES["dlq_purge_filter"].replace("{where}", where)
        return await self._write(lambda c: int(c.execute(sql, params).rowcount))

    # ------------------------------------------------------- dashboard views

    async def queue_breakdown(self, *, now: float) -> list[QueueGroup]:
        rows = await self._read(lambda c: c.execute(QUERIES["queue_breakdown"]).fetchall())
        return [QueueGroup(*row) for row in rows]

    async def dlq_breakdown(self, *, scan_limit: int = 100_000) -> list[DLQGroup]:
        rows = await self._read(lambda c: c.execute(QUERIES["dlq_breakdown"]).fetchall())
        return [dlq_group(*row) for row in rows]

    async def queue_sample(self, *, limit: int) -> list[LeasedEvent]:
        rows = await self._read(lambda c: c.execute(QUERIES["queue_sample"], (limit,)).fetchall())
        return [leased_from_row(row) for row in rows]

    # ------------------------------------------------------ operator records

    async def revoke_session(self, session_hash: str, *, expires_at: float, now: float) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(QUERIES["forget_expired_revocations"], (now,))
            conn.execute(QUERIES["revoke_session"], (session_hash, expires_at))

        await self._write(run)

    async def session_revoked(self, session_hash: str) -> bool:
        row = await self._read(
            lambda c: c.execute(QUERIES["session_revoked"], (session_hash,)).fetchone()
        )
        return row is not None

    async def record_audit(
        self, *, at: float, actor: str, action: str, target: str, count: int, origin: str
    ) -> None:
        await self._write(
            lambda c: c.execute(QUERIES["record_audit"], (at, actor, action, target, count, origin))
        )

    async def audit_log(self, *, limit: int = 100) -> list[AuditRecord]:
        rows = await self._read(lambda c: c.execute(QUERIES["audit_log"], (limit,)).fetchall())
        return [AuditRecord(*row) for row in rows]


# ------------------------------------------------------------------ read helpers


def _pixel_due(conn: sqlite3.Connection, pixel_id: str, now: float) -> bool:
    if conn.execute(QUERIES["pixel_ready"], (pixel_id,)).fetchone():
        return True
    return conn.execute(QUERIES["pixel_waiting_due"], (pixel_id, now)).fetchone() is not None


def _pixel_next_due(conn: sqlite3.Connection, pixel_id: str) -> float | None:
    ready = conn.execute(QUERIES["pixel_ready_queued_at"], (pixel_id,)).fetchone()
    not_ready = conn.execute(QUERIES["pixel_not_ready_next"], (pixel_id,)).fetchone()[0]
    times = [t for t in (ready[0] if ready else None, not_ready) if t is not None]
    return min(times) if times else None


def _queue_stats(conn: sqlite3.Connection) -> QueueStats:
    pixel_rows = [_pixel_stats(conn, pixel_id) for pixel_id in _distinct_pixels(conn)]
    oldest = conn.execute(QUERIES["oldest_queued_at"]).fetchone()
    reason_rows = conn.execute(QUERIES["dlq_by_reason"]).fetchall()
    return queue_stats(pixel_rows, oldest[0] if oldest else None, reason_rows)


def _pixel_stats(conn: sqlite3.Connection, pixel_id: str) -> tuple[str, int, int, float | None]:
    """``(pixel_id, depth, leased, earliest deadline)``; the deadline per state so that
    each lookup uses the ``(pixel_id, state, deadline)`` index."""
    depth = conn.execute(QUERIES["pixel_depth"], (pixel_id,)).fetchone()[0]
    leased = conn.execute(QUERIES["pixel_leased"], (pixel_id,)).fetchone()[0]
    deadlines = [
        conn.execute(QUERIES["pixel_min_deadline"], (pixel_id, state)).fetchone()[0]
        for state in (READY, WAITING, LEASED)
    ]
    known = [d for d in deadlines if d is not None]
    return pixel_id, depth, leased, min(known) if known else None
