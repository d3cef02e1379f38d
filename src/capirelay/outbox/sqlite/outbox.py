"""The embedded outbox: one SQLite file in WAL mode, written by one group-committing thread.

Why this shape:

* **One writer thread, group commit.**  SQLite allows one writer at a time and
  a durable commit costs an fsync.  Every state change (enqueue, lease, ack,
  reschedule, dead-letter ...) is a small function handed to the writer
  thread; the thread takes everything waiting in its inbox, runs it in ONE
  transaction and commits once, then resolves each caller's future.  Many
  concurrent HTTP requests therefore share one fsync, and a caller only hears
  "done" after its data is on disk (``synchronous=FULL`` by default).
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
claims all of a call's dedup keys with one set-based upsert the same way.

A lease stamps its rows with a random lease id; settle calls that pass it touch
only rows still carrying it (see :mod:`capirelay.outbox.base`).  Closing refuses
new writes with :class:`StorageUnavailable` and fails any write the thread can
no longer run, so no caller waits forever on a stopped writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from capirelay.outbox._rows import (
    DLQ_FILTER_FIELDS,
    dead_letter_from_row,
    dlq_filter_values,
    leased_from_row,
    queue_stats,
    require_purge_target,
)
from capirelay.outbox._sql import Migration
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
from capirelay.outbox.sqlite._statements import MIGRATIONS, NO_LEASE, QUERIES
from capirelay.outbox.sqlite.receipts import SQLiteReceipts, insert_dead_letter_receipts

__all__ = ["MIGRATIONS", "QUERIES", "SQLiteOutbox", "migrate"]

log = logging.getLogger("capirelay.outbox")

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]

READY: Final = 0
WAITING: Final = 1
LEASED: Final = 2

# Operations per grouped transaction; bounds how long one commit holds callers.
MAX_GROUP: Final = 1024
# Page cache per connection (KiB): a large backlog's indexes stay in memory, not re-read.
CACHE_KIB: Final = 64 * 1024
SYNCHRONOUS_MODES: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
# Most rows per multi-row VALUES statement (10 parameters a row stays far below SQLite's
# 32,766-parameter limit).
MAX_PIECE: Final = 256
# How often the writer retries for the write lock another process holds (seconds).
BEGIN_RETRY_FIRST: Final = 0.0001
BEGIN_RETRY_MAX: Final = 0.001


def storage_error(exc: sqlite3.Error) -> StorageUnavailable:
    """Describe a SQLite failure without any row data (SQLite's messages hold none)."""
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    return StorageUnavailable(f"SQLite outbox unavailable ({name}): {exc}")


@functools.cache
def _many_rows_sql(name: str, row: str, rows: int) -> str:
    """Statement ``name`` with a VALUES list of ``rows`` times ``row``.

    Enqueue claims a call's dedup keys and inserts its rows with multi-row VALUES
    statements: one statement step per piece instead of one per event.  Piece sizes are
    powers of two (at most MAX_PIECE rows), so a handful of statement texts cover every
    call size and stay in the connection's prepared-statement cache."""
    return QUERIES[name].replace("{values}", ", ".join([row] * rows))


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


def _pieces(count: int) -> list[int]:
    """``count`` split into power-of-two sizes, largest first (100 -> 64, 32, 4)."""
    sizes: list[int] = []
    while count:
        size = min(MAX_PIECE, 1 << (count.bit_length() - 1))
        sizes.append(size)
        count -= size
    return sizes


def _claim_keys(
    conn: sqlite3.Connection, keys: Sequence[tuple[str, str, str]], now: float
) -> list[bool]:
    """Claim each dedup key (see ``_claim_sql``); per key, in order, whether it was
    claimed.  A key repeated in ``keys`` counts as claimed at its first place only."""
    cutoff = now - DEDUP_WINDOW_SECONDS
    claimed: set[tuple[str, str, str]] = set()
    start = 0
    for size in _pieces(len(keys)):
        params = [v for key in keys[start : start + size] for v in (*key, now)]
        params.append(cutoff)
        claimed.update(
            map(
                tuple,
                conn.execute(
                    _many_rows_sql("claim_dedup_keys", "(?, ?, ?, ?, 1)", size), params
                ).fetchall(),
            )
        )
        start += size
    outcome: list[bool] = []
    for key in keys:
        outcome.append(key in claimed)
        claimed.discard(key)
    return outcome


def _claim_orders(conn: sqlite3.Connection, events: Sequence[NewEvent], now: float) -> list[bool]:
    """Write the order-ledger entries of a call's order events; per event, in order, whether
    it may be queued (no order key, or its key was new; a key repeated in the call counts
    at its first place only)."""
    keys = list(dict.fromkeys(e.order_key for e in events if e.order_key is not None))
    claimed: set[bytes] = set()
    start = 0
    for size in _pieces(len(keys)):
        params = [v for key in keys[start : start + size] for v in (key, now)]
        claimed.update(
            bytes(row[0])
            for row in conn.execute(_many_rows_sql("claim_order_keys", "(?, ?)", size), params)
        )
        start += size
    outcome: list[bool] = []
    for event in events:
        if event.order_key is None:
            outcome.append(True)
        else:
            outcome.append(event.order_key in claimed)
            claimed.discard(event.order_key)
    return outcome


def _insert_queued(conn: sqlite3.Connection, events: Sequence[NewEvent], now: float) -> None:
    start = 0
    for size in _pieces(len(events)):
        params = [
            v
            for e in events[start : start + size]
            for v in (e.pixel_id, e.event_name, e.event_id, e.payload, e.event_time,
                      e.deadline, e.test_event_code, e.source, now, now)
        ]  # fmt: skip
        conn.execute(
            _many_rows_sql("insert_queued", "(?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)", size), params
        )
        start += size


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


# ------------------------------------------------------------------ connections


def _connect(path: Path, *, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    # isolation_level=None: this module issues BEGIN/COMMIT itself (group commit).
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    return conn


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the numbered steps above ``PRAGMA user_version``; returns the new version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise StorageUnavailable(
            f"outbox schema version {current} is newer than this capirelay knows ({latest}); "
            "upgrade capirelay or point storage at another file"
        )
    for step in migrations:
        if step.version <= current:
            continue
        # One script, one transaction: a failed step leaves the previous version intact.
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{step.script}\nPRAGMA user_version = {step.version};\nCOMMIT;"
            )
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.info("outbox schema migrated to version %d (%s)", step.version, step.name)
        current = step.version
    return current


@dataclass(slots=True)
class _WriteOp:
    fn: WriteFn
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


_STOP: Final = object()


def _deliver(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; its write still happened
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _deliver_all(outcomes: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, value in outcomes:
        _deliver(future, value, None)


class _GroupCommitWriter(threading.Thread):
    """The only thread that writes; see the module docstring for the group-commit rules."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        max_group: int,
        busy_timeout: float = 5.0,
    ) -> None:
        super().__init__(name="capirelay-outbox-writer", daemon=True)
        self._connect = connect
        self._max_group = max_group
        self._busy_timeout = busy_timeout
        self._inbox: queue.SimpleQueue[_WriteOp | object] = queue.SimpleQueue()
        # Guards _closing together with the inbox: once _STOP is in, nothing follows it.
        self._gate = threading.Lock()
        self._closing = False
        self.ready: ThreadFuture[None] = ThreadFuture()
        self.commits = 0
        self.operations = 0

    def submit(self, op: _WriteOp) -> None:
        """Queue a write; :class:`StorageUnavailable` at once if the writer is stopping."""
        with self._gate:
            if self._closing:
                raise StorageUnavailable("the outbox is closing")
            self._inbox.put(op)

    def stop(self) -> None:
        """Refuse new writes; the thread finishes those already queued, then exits."""
        with self._gate:
            if not self._closing:
                self._closing = True
                self._inbox.put(_STOP)

    def run(self) -> None:
        try:
            conn = self._connect()
            migrate(conn)
        except (sqlite3.Error, StorageUnavailable) as exc:
            self.ready.set_exception(
                exc if isinstance(exc, StorageUnavailable) else storage_error(exc)
            )
            return
        # From here on the writer waits for the file's write lock itself (_begin): SQLite's
        # own busy handler sleeps 1, 2, 5, 10 ... 100 ms between tries, which under
        # `serve --workers N` (N writers on one file) turns a 0.5 ms wait into a 100 ms one.
        conn.execute("PRAGMA busy_timeout = 0")
        self.ready.set_result(None)
        try:
            self._serve(conn)
        finally:
            conn.close()
            self._refuse_pending()

    def _refuse_pending(self) -> None:
        """Fail every write the thread will no longer run (it is exiting) instead of
        leaving its caller waiting forever."""
        with self._gate:
            self._closing = True
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _WriteOp):
                self._resolve(item, None, StorageUnavailable("the outbox closed before this write"))

    def _serve(self, conn: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            first = self._inbox.get()
            if first is _STOP:
                return
            group: list[_WriteOp] = [first]  # type: ignore[list-item]
            while len(group) < self._max_group:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                group.append(item)  # type: ignore[arg-type]
            self._commit_group(conn, group)

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE`` (take the write lock), retried every 0.1 to 1 ms while another
        process holds it, for at most ``busy_timeout`` seconds; then SQLITE_BUSY."""
        delay = BEGIN_RETRY_FIRST
        deadline: float | None = None
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                now = time.monotonic()
                deadline = now + self._busy_timeout if deadline is None else deadline
                if now >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, BEGIN_RETRY_MAX)

    def _commit_group(self, conn: sqlite3.Connection, group: list[_WriteOp]) -> None:
        try:
            self._begin(conn)
            results = [op.fn(conn) for op in group]
            conn.execute("COMMIT")
        except Exception:
            self._rollback(conn)
            if len(group) == 1:
                self._commit_alone(conn, group[0])
            else:
                # Something in the group failed: retry each alone so one bad operation
                # (or one that needs space the disk no longer has) fails only itself.
                for op in group:
                    self._commit_alone(conn, op)
            return
        self.commits += 1
        self.operations += len(group)
        self._resolve_group(group, results)

    def _commit_alone(self, conn: sqlite3.Connection, op: _WriteOp) -> None:
        try:
            self._begin(conn)
            result = op.fn(conn)
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._rollback(conn)
            self._resolve(op, None, exc)
        except sqlite3.Error as exc:
            self._rollback(conn)
            log.error("outbox write failed: %s", storage_error(exc))
            self._resolve(op, None, storage_error(exc))
        except Exception as exc:
            self._rollback(conn)
            self._resolve(op, None, exc)
        else:
            self.commits += 1
            self.operations += 1
            self._resolve(op, result, None)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # SQLite rolls back by itself on some errors (SQLITE_FULL, IOERR); then there is
        # nothing left to roll back and ROLLBACK itself would fail.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    @staticmethod
    def _resolve(op: _WriteOp, value: Any, error: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop is already closed
            op.loop.call_soon_threadsafe(_deliver, op.future, value, error)

    @staticmethod
    def _resolve_group(group: list[_WriteOp], results: list[Any]) -> None:
        """Resolve a committed group with ONE wake-up per event loop, not one per call:
        each ``call_soon_threadsafe`` is a cross-thread wake-up of the loop, and a group
        commonly holds dozens of requests of the same loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for op, result in zip(group, results, strict=True):
            by_loop.setdefault(op.loop, []).append((op.future, result))
        for loop, outcomes in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is already closed
                loop.call_soon_threadsafe(_deliver_all, outcomes)


class _Reader:
    """One thread with its own read-only connection; WAL lets it read while the writer writes."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capirelay-reader")
        self._conn: sqlite3.Connection | None = None

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = self._connect()
            self._conn.execute("PRAGMA query_only = 1")
        try:
            return fn(self._conn)
        except sqlite3.Error as exc:
            raise storage_error(exc) from None

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, fn)

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_connection)
        self._executor.shutdown(wait=True)


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
        self._writer: _GroupCommitWriter | None = None
        self._reader: _Reader | None = None

    # ------------------------------------------------------------- lifecycle

    def _connect_writer(self) -> sqlite3.Connection:
        conn = _connect(self.path, synchronous=self.synchronous, busy_timeout=self.busy_timeout)
        if self.max_bytes is not None:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(1, self.max_bytes // page_size)}")
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        return _connect(self.path, synchronous=self.synchronous, busy_timeout=self.busy_timeout)

    async def open(self) -> None:
        if self._writer is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = _GroupCommitWriter(self._connect_writer, self._max_group, self.busy_timeout)
        writer.start()
        await asyncio.wrap_future(writer.ready)
        self._writer = writer
        self._reader = _Reader(self._connect_reader)

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        if writer is not None:
            writer.stop()  # queued behind every pending write, so those finish first
            await asyncio.get_running_loop().run_in_executor(None, writer.join)
        if reader is not None:
            await reader.close()

    @property
    def commits(self) -> int:
        """Transactions committed by the writer (group commit: usually far fewer than calls)."""
        return self._writer.commits if self._writer else 0

    @property
    def write_operations(self) -> int:
        """Write calls committed so far."""
        return self._writer.operations if self._writer else 0

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        writer = self._writer
        if writer is None or not writer.is_alive():
            raise StorageUnavailable("the outbox is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        writer.submit(_WriteOp(fn, loop, future))
        return await future

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            raise StorageUnavailable("the outbox is not open")
        result: T = await self._reader.read(fn)
        return result

    async def ping(self) -> bool:
        if self._writer is None or not self._writer.is_alive():
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
                new_order = _claim_orders(conn, batch, now)
                picked = [i for i, ok in enumerate(new_order) if ok]
                claimed = [False] * len(batch)
                for i, ok in zip(
                    picked, _claim_keys(conn, [keys[i] for i in picked], now), strict=True
                ):
                    claimed[i] = ok
            else:
                claimed = _claim_keys(conn, keys, now)
            _insert_queued(conn, [e for e, ok in zip(batch, claimed, strict=True) if ok], now)
            return [EnqueueStatus.QUEUED if ok else EnqueueStatus.DUPLICATE for ok in claimed]

        return await self._write(run)

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

    async def stats(self, *, now: float) -> QueueStats:
        return await self._read(_queue_stats)

    async def expire_dedup(self, *, now: float) -> int:
        cutoff = now - DEDUP_WINDOW_SECONDS
        removed = 0
        # Chunked so a large expiry never holds the writer (and ingest) for long.
        while True:
            count = await self._write(
                lambda c: c.execute(QUERIES["expire_dedup"], (cutoff, DEDUP_EXPIRY_CHUNK)).rowcount
            )
            removed += count
            if count < DEDUP_EXPIRY_CHUNK:
                return removed

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
            claimed = _claim_keys(conn, [(p, n, e) for _, p, n, e in letters], now)
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
        return [
            DLQGroup(pixel, name, reason, code, subcode, count, last, message, fbtrace)
            for pixel, name, reason, code, subcode, count, last, message, fbtrace in rows
        ]

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
