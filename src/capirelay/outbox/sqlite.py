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
  *waiting* (backoff) or *leased* (see ``schema_sqlite.sql``).  A lease first
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

# SQL text here is built only from this module's constants; every value is a bound parameter.
# ruff: noqa: S608

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
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from capirelay.outbox._receipts_sqlite import SQLiteReceipts, insert_dead_letter_receipts
from capirelay.outbox._rows import (
    DLQ_FILTER_FIELDS,
    dead_letter_from_row,
    dlq_filter_values,
    leased_from_row,
    queue_stats,
    require_purge_target,
)
from capirelay.outbox.base import (
    DEDUP_WINDOW_SECONDS,
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
    QueueGroup,
    QueueStats,
    RequeueResult,
    StorageUnavailable,
)

__all__ = ["MIGRATIONS", "Migration", "SQLiteOutbox"]

log = logging.getLogger("capirelay.outbox")

T = TypeVar("T")
WriteFn = Callable[[sqlite3.Connection], Any]

READY: Final = 0
WAITING: Final = 1
LEASED: Final = 2

# Most attempts kept per event; a week of hourly retries must not grow a row without bound.
ATTEMPT_LOG_LIMIT: Final = 20
# Operations per grouped transaction; bounds how long one commit holds callers.
MAX_GROUP: Final = 1024
DEDUP_EXPIRY_CHUNK: Final = 10_000
# Due rows promoted per lease, as a multiple of the lease size (see _PROMOTE_DUE).
PROMOTE_FACTOR: Final = 2
# Page cache per connection (KiB): a large backlog's indexes stay in memory, not re-read.
CACHE_KIB: Final = 64 * 1024
SYNCHRONOUS_MODES: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
# Most rows per multi-row VALUES statement (10 parameters a row stays far below SQLite's
# 32,766-parameter limit).
MAX_PIECE: Final = 256
# How often the writer retries for the write lock another process holds (seconds).
BEGIN_RETRY_FIRST: Final = 0.0001
BEGIN_RETRY_MAX: Final = 0.001
# queue.lease_id of a row no lease holds; lease ids lie above it (schema version 2 says why).
NO_LEASE: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema step; ``PRAGMA user_version`` records the last one applied."""

    version: int
    description: str
    script: str


def _packaged_sql(name: str) -> str:
    return resources.files("capirelay.outbox").joinpath(name).read_text(encoding="utf-8")


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "queue, dedup and dead-letter tables", _packaged_sql("schema_sqlite.sql")),
    Migration(2, "lease ids, queued dedup keys", _packaged_sql("schema_sqlite_0002_leases.sql")),
    Migration(
        3,
        "Meta diagnostics checks, history, runs, delivered per hour, schedule lease",
        _packaged_sql("schema_sqlite_0003_meta_diagnostics.sql"),
    ),
    Migration(
        4, "dashboard sessions, operator audit", _packaged_sql("schema_sqlite_0004_operator.sql")
    ),
    Migration(5, "order ledger", _packaged_sql("schema_sqlite_0005_order_ledger.sql")),
    Migration(6, "receipts, erasure audit", _packaged_sql("schema_sqlite_0006_receipts.sql")),
)


def storage_error(exc: sqlite3.Error) -> StorageUnavailable:
    """Describe a SQLite failure without any row data (SQLite's messages hold none)."""
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    return StorageUnavailable(f"SQLite outbox unavailable ({name}): {exc}")


# --------------------------------------------------------------------------- SQL

_LEASED_COLUMNS = (
    "id, pixel_id, event_name, event_id, payload, event_time, deadline, attempts, "
    "test_event_code, queued_at"
)
_DLQ_COLUMNS = (
    "id, pixel_id, event_name, event_id, payload, event_time, deadline, reason, error, "
    "attempt_log, test_event_code, queued_at, dead_at"
)
_IDS = "SELECT value FROM json_each(?)"

# Enqueue claims a call's dedup keys and inserts its rows with multi-row VALUES
# statements: one statement step per piece instead of one per event.  Piece sizes are
# powers of two (at most MAX_PIECE rows), so a handful of statement texts cover every
# call size and stay in the connection's prepared-statement cache.
#
# The claim inserts each key, or takes it over when the remembered one is older than
# the window AND its event is no longer queued (dedup.queued).  RETURNING names the keys
# claimed; a key repeated in the call is claimed once (its later row conflicts with the
# first, whose seen_at is inside the window; pieces run in call order).
_CLAIM_DEDUP_KEYS_HEAD = (
    "INSERT INTO dedup (pixel_id, event_name, event_id, seen_at, queued) VALUES "
)
_CLAIM_DEDUP_KEYS_TAIL = """
ON CONFLICT (pixel_id, event_name, event_id) DO UPDATE SET seen_at = excluded.seen_at, queued = 1
WHERE dedup.seen_at <= ? AND dedup.queued = 0
RETURNING pixel_id, event_name, event_id
"""
_INSERT_QUEUED_HEAD = """
INSERT INTO queue (pixel_id, event_name, event_id, payload, event_time, deadline,
                   test_event_code, source, queued_at, state, available_at)
VALUES """
# Bounded, longest-waiting first: after an outage hundreds of thousands of rows can come
# due at once, and promoting them all in one lease would hold the writer (and ingest) for
# seconds.  Promoting at least `limit` rows keeps every lease full while due rows remain.
_PROMOTE_DUE = """
UPDATE queue SET state = 0
WHERE id IN (
    SELECT id FROM queue INDEXED BY queue_not_ready
    WHERE pixel_id = ? AND state > 0 AND available_at <= ?
    ORDER BY available_at LIMIT ?
)
"""
_LEASE = f"""
UPDATE queue SET state = 2, available_at = ?, lease_id = ?
WHERE id IN (
    SELECT id FROM queue INDEXED BY queue_by_state_deadline
    WHERE pixel_id = ? AND state = 0 ORDER BY deadline LIMIT ?
)
RETURNING {_LEASED_COLUMNS}
"""
# Appends one attempt (JSON) and drops the oldest past ATTEMPT_LOG_LIMIT.
_APPEND_ATTEMPT = f"""
json_insert(
    CASE WHEN json_array_length(attempt_log) >= {ATTEMPT_LOG_LIMIT}
         THEN json_remove(attempt_log, '$[0]') ELSE attempt_log END,
    '$[#]', json(?))
"""
_RESCHEDULE = f"""
UPDATE queue SET state = 1, available_at = ?, attempts = attempts + 1, lease_id = {NO_LEASE},
                 attempt_log = {_APPEND_ATTEMPT}
WHERE id IN ({_IDS})
"""
_RELEASE = f"""
UPDATE queue SET state = 0, lease_id = {NO_LEASE} WHERE state = 2 AND id IN ({_IDS})
"""
# The ids (as a JSON array) of the rows still carrying a lease id: what a settle call
# given that lease id may touch.
_HELD_IDS = f"SELECT json_group_array(id) FROM queue WHERE id IN ({_IDS}) AND lease_id = ?"
# A heartbeat never shortens a lease.  A row whose lease ran out but that nobody leased
# since (still this lease id, even if promoted to ready) is taken back.
_EXTEND_HELD = f"""
UPDATE queue SET state = 2, available_at = max(available_at, ?)
WHERE id IN ({_IDS}) AND lease_id = ?
RETURNING id
"""
_EXTEND_LEASED = f"""
UPDATE queue SET available_at = max(available_at, ?)
WHERE id IN ({_IDS}) AND state = 2
RETURNING id
"""
_ACK = f"DELETE FROM queue WHERE id IN ({_IDS})"
# The seen_at of the newest entry beyond the ledger's cap (entries at or before it go).
_ORDER_LEDGER_CAP = "SELECT seen_at FROM order_ledger ORDER BY seen_at DESC LIMIT 1 OFFSET ?"
_PRUNE_ORDER_LEDGER = """
DELETE FROM order_ledger
WHERE key IN (SELECT key FROM order_ledger WHERE seen_at <= ? ORDER BY seen_at LIMIT ?)
"""
_MOVE_TO_DLQ = f"""
INSERT INTO dead_letters (pixel_id, event_name, event_id, payload, event_time, deadline,
                          test_event_code, source, queued_at, reason, error, attempt_log, dead_at)
SELECT pixel_id, event_name, event_id, payload, event_time, deadline, test_event_code, source,
       queued_at, ?, ?, CASE WHEN ? IS NULL THEN attempt_log ELSE {_APPEND_ATTEMPT} END, ?
FROM queue WHERE id IN ({_IDS})
"""
# Delivered: the key stays remembered for the rest of its window, no longer pinned.
_UNPIN_DEDUP_OF_QUEUED = f"""
UPDATE dedup SET queued = 0 WHERE (pixel_id, event_name, event_id) IN (
    SELECT pixel_id, event_name, event_id FROM queue WHERE id IN ({_IDS}))
"""
_FORGET_DEDUP_OF_QUEUED = f"""
DELETE FROM dedup WHERE (pixel_id, event_name, event_id) IN (
    SELECT pixel_id, event_name, event_id FROM queue WHERE id IN ({_IDS}))
"""
_REQUEUE_FROM_DLQ = f"""
INSERT INTO queue (pixel_id, event_name, event_id, payload, event_time, deadline,
                   test_event_code, source, queued_at, attempts, state, available_at, attempt_log)
SELECT pixel_id, event_name, event_id, payload, event_time, deadline, test_event_code, source,
       ?, 0, 0, ?, attempt_log
FROM dead_letters WHERE id IN ({_IDS})
"""
_DLQ_KEYS = f"""
SELECT id, pixel_id, event_name, event_id FROM dead_letters WHERE id IN ({_IDS}) ORDER BY id
"""
_DELETE_DLQ_IDS = f"DELETE FROM dead_letters WHERE id IN ({_IDS})"
# A key whose event is still queued (or leased) is kept however old: forgetting it would
# let a client retry queue a second copy while the first still waits for delivery.
_EXPIRE_DEDUP_CHUNK = """
DELETE FROM dedup WHERE (pixel_id, event_name, event_id) IN (
    SELECT pixel_id, event_name, event_id FROM dedup WHERE seen_at <= ? AND queued = 0 LIMIT ?)
"""
# Dashboard aggregates: full scans, run on page views only (never on the hot path).
_QUEUE_BREAKDOWN = """
SELECT pixel_id, event_name, count(*), min(queued_at), min(deadline)
FROM queue GROUP BY pixel_id, event_name ORDER BY pixel_id, event_name
"""
# With a single max() aggregate SQLite takes the bare columns (message, fbtrace_id)
# from the row holding the maximum: the group's most recent letter.
_DLQ_BREAKDOWN = """
SELECT pixel_id, event_name, reason, json_extract(error, '$.code') AS code,
       json_extract(error, '$.subcode') AS subcode, count(*) AS n, max(dead_at),
       json_extract(error, '$.message'), json_extract(error, '$.fbtrace_id')
FROM dead_letters GROUP BY pixel_id, event_name, reason, code, subcode
ORDER BY n DESC
"""
_QUEUE_SAMPLE = f"SELECT {_LEASED_COLUMNS} FROM queue ORDER BY id DESC LIMIT ?"
# Distinct pixels by skipping through the index: O(pixels · log rows), never a full scan.
_NEXT_PIXEL = (
    "SELECT pixel_id FROM queue INDEXED BY queue_by_state_deadline "
    "WHERE pixel_id > ? ORDER BY pixel_id LIMIT 1"
)


def _ids_json(ids: Sequence[int]) -> bytes:
    return orjson.dumps([int(i) for i in ids])


def _new_lease_id() -> int:
    return NO_LEASE + 1 + secrets.randbelow((1 << 63) - NO_LEASE - 1)


def _lease_number(lease_id: str) -> int:
    """This backend's lease ids are decimal integers; anything else matches no row."""
    return int(lease_id) if lease_id.isdigit() else -1


def _held_ids(conn: sqlite3.Connection, id_list: bytes, lease_id: str | None) -> bytes | str:
    """The ids a settle call may touch: all of them, or those still under ``lease_id``."""
    if lease_id is None:
        return id_list
    held: str = conn.execute(_HELD_IDS, (id_list, _lease_number(lease_id))).fetchone()[0]
    return held


def _pieces(count: int) -> list[int]:
    """``count`` split into power-of-two sizes, largest first (100 -> 64, 32, 4)."""
    sizes: list[int] = []
    while count:
        size = min(MAX_PIECE, 1 << (count.bit_length() - 1))
        sizes.append(size)
        count -= size
    return sizes


@functools.cache
def _claim_sql(rows: int) -> str:
    return _CLAIM_DEDUP_KEYS_HEAD + ", ".join(["(?, ?, ?, ?, 1)"] * rows) + _CLAIM_DEDUP_KEYS_TAIL


@functools.cache
def _insert_queued_sql(rows: int) -> str:
    return _INSERT_QUEUED_HEAD + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)"] * rows)


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
        claimed.update(map(tuple, conn.execute(_claim_sql(size), params).fetchall()))
        start += size
    outcome: list[bool] = []
    for key in keys:
        outcome.append(key in claimed)
        claimed.discard(key)
    return outcome


@functools.cache
def _claim_orders_sql(rows: int) -> str:
    return (
        "INSERT INTO order_ledger (key, seen_at) VALUES "
        + ", ".join(["(?, ?)"] * rows)
        + " ON CONFLICT (key) DO NOTHING RETURNING key"
    )


def _claim_orders(conn: sqlite3.Connection, events: Sequence[NewEvent], now: float) -> list[bool]:
    """Write the order-ledger entries of a call's order events; per event, in order, whether
    it may be queued (no order key, or its key was new; a key repeated in the call counts
    at its first place only)."""
    keys = list(dict.fromkeys(e.order_key for e in events if e.order_key is not None))
    claimed: set[bytes] = set()
    start = 0
    for size in _pieces(len(keys)):
        params = [v for key in keys[start : start + size] for v in (key, now)]
        claimed.update(bytes(row[0]) for row in conn.execute(_claim_orders_sql(size), params))
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
        conn.execute(_insert_queued_sql(size), params)
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
    row = conn.execute(_NEXT_PIXEL, ("",)).fetchone()
    while row is not None:
        pixels.append(row[0])
        row = conn.execute(_NEXT_PIXEL, (row[0],)).fetchone()
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
        log.info("outbox schema migrated to version %d (%s)", step.version, step.description)
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


class SQLiteOutbox(SQLiteReceipts, Outbox):
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
            return bool(await self._read(lambda c: c.execute("SELECT 1").fetchone()[0]))
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
            conn.execute(_PROMOTE_DUE, (pixel_id, now, limit * PROMOTE_FACTOR))
            params = (now + lease_seconds, lease_number, pixel_id, limit)
            rows = conn.execute(_LEASE, params).fetchall()
            leased = [leased_from_row(row, lease_id) for row in rows]
            return sorted(leased, key=lambda e: (e.deadline, e.id))

        return await self._write(run)

    async def extend_lease(
        self, ids: Sequence[int], *, until: float, now: float, lease_id: str | None = None
    ) -> list[int]:
        if until <= now:
            raise ValueError("a lease extension must end after now")
        if not ids:
            return []
        id_list = _ids_json(ids)

        def run(conn: sqlite3.Connection) -> list[int]:
            if lease_id is None:
                rows = conn.execute(_EXTEND_LEASED, (until, id_list)).fetchall()
            else:
                params = (until, id_list, _lease_number(lease_id))
                rows = conn.execute(_EXTEND_HELD, params).fetchall()
            return sorted(row[0] for row in rows)

        return await self._write(run)

    async def ack(self, ids: Sequence[int], *, now: float, lease_id: str | None = None) -> None:
        if ids:
            requested = _ids_json(ids)

            def run(conn: sqlite3.Connection) -> None:
                id_list = _held_ids(conn, requested, lease_id)
                conn.execute(_UNPIN_DEDUP_OF_QUEUED, (id_list,))
                conn.execute(_ACK, (id_list,))

            await self._write(run)

    async def reschedule(
        self,
        ids: Sequence[int],
        *,
        next_attempt_at: float,
        attempt: Attempt,
        lease_id: str | None = None,
    ) -> None:
        if not ids:
            return
        attempt_json = orjson.dumps(attempt.to_dict()).decode()
        id_list = _ids_json(ids)

        def run(conn: sqlite3.Connection) -> None:
            held = _held_ids(conn, id_list, lease_id)
            conn.execute(_RESCHEDULE, (next_attempt_at, attempt_json, held))

        await self._write(run)

    async def release(self, ids: Sequence[int], *, lease_id: str | None = None) -> None:
        if ids:
            id_list = _ids_json(ids)
            await self._write(lambda c: c.execute(_RELEASE, (_held_ids(c, id_list, lease_id),)))

    async def dead_letter(
        self,
        ids: Sequence[int],
        *,
        reason: DeadLetterReason,
        attempt: Attempt | None,
        now: float,
        lease_id: str | None = None,
    ) -> None:
        if not ids:
            return
        requested = _ids_json(ids)
        attempt_json = orjson.dumps(attempt.to_dict()).decode() if attempt else None

        def run(conn: sqlite3.Connection) -> None:
            id_list = _held_ids(conn, requested, lease_id)
            insert_dead_letter_receipts(conn, id_list, str(reason), attempt_json, now)
            conn.execute(
                _MOVE_TO_DLQ,
                (str(reason), attempt_json, attempt_json, attempt_json, now, id_list),
            )
            conn.execute(_FORGET_DEDUP_OF_QUEUED, (id_list,))
            conn.execute(_ACK, (id_list,))

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
                lambda c: c.execute(_EXPIRE_DEDUP_CHUNK, (cutoff, DEDUP_EXPIRY_CHUNK)).rowcount
            )
            removed += count
            if count < DEDUP_EXPIRY_CHUNK:
                return removed

    async def prune_order_ledger(
        self, *, now: float, retention_seconds: float, max_entries: int
    ) -> int:
        cutoff = now - retention_seconds
        beyond_cap = await self._read(
            lambda c: c.execute(_ORDER_LEDGER_CAP, (max(0, max_entries),)).fetchone()
        )
        if beyond_cap is not None:
            cutoff = max(cutoff, float(beyond_cap[0]))
        removed = 0
        while True:  # chunked, like expire_dedup: never holds the writer (and ingest) for long
            count = await self._write(
                lambda c: c.execute(_PRUNE_ORDER_LEDGER, (cutoff, DEDUP_EXPIRY_CHUNK)).rowcount
            )
            removed += count
            if count < DEDUP_EXPIRY_CHUNK:
                return removed

    async def order_ledger_size(self) -> int:
        count: int = await self._read(
            lambda c: c.execute("SELECT count(*) FROM order_ledger").fetchone()[0]
        )
        return count

    # ------------------------------------------------------------ dead letters

    async def dlq_list(
        self, flt: DLQFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        where, params = _dlq_where(flt)
        sql = (
            f"SELECT {_DLQ_COLUMNS} FROM dead_letters {where} "
            "ORDER BY dead_at DESC, id DESC LIMIT ? OFFSET ?"
        )
        rows = await self._read(lambda c: c.execute(sql, (*params, limit, offset)).fetchall())
        return [_dead_letter_from_row(r) for r in rows]

    async def dlq_get(self, dlq_id: int) -> DeadLetter | None:
        sql = f"SELECT {_DLQ_COLUMNS} FROM dead_letters WHERE id = ?"
        row = await self._read(lambda c: c.execute(sql, (dlq_id,)).fetchone())
        return _dead_letter_from_row(row) if row else None

    async def dlq_requeue(self, ids: Sequence[int], *, now: float) -> RequeueResult:
        if not ids:
            return RequeueResult()
        id_list = _ids_json(ids)

        def run(conn: sqlite3.Connection) -> RequeueResult:
            letters = conn.execute(_DLQ_KEYS, (id_list,)).fetchall()
            claimed = _claim_keys(conn, [(p, n, e) for _, p, n, e in letters], now)
            result = RequeueResult()
            for (dlq_id, *_), ok in zip(letters, claimed, strict=True):
                (result.requeued if ok else result.duplicate).append(dlq_id)
            moving = _ids_json(result.requeued)
            conn.execute(_REQUEUE_FROM_DLQ, (now, now, moving))
            conn.execute(_DELETE_DLQ_IDS, (moving,))
            return result

        return await self._write(run)

    async def dlq_purge(
        self, ids: Sequence[int] | None = None, flt: DLQFilter | None = None
    ) -> int:
        require_purge_target(ids, flt)
        if ids is not None:
            id_list = _ids_json(ids)
            return await self._write(lambda c: int(c.execute(_DELETE_DLQ_IDS, (id_list,)).rowcount))
        where, params = _dlq_where(flt)
        sql = f"DELETE FROM dead_letters {where}"
        return await self._write(lambda c: int(c.execute(sql, params).rowcount))

    # ------------------------------------------------------- dashboard views

    async def queue_breakdown(self, *, now: float) -> list[QueueGroup]:
        rows = await self._read(lambda c: c.execute(_QUEUE_BREAKDOWN).fetchall())
        return [QueueGroup(*row) for row in rows]

    async def dlq_breakdown(self, *, scan_limit: int = 100_000) -> list[DLQGroup]:
        rows = await self._read(lambda c: c.execute(_DLQ_BREAKDOWN).fetchall())
        return [
            DLQGroup(pixel, name, reason, code, subcode, count, last, message, fbtrace)
            for pixel, name, reason, code, subcode, count, last, message, fbtrace in rows
        ]

    async def queue_sample(self, *, limit: int) -> list[LeasedEvent]:
        rows = await self._read(lambda c: c.execute(_QUEUE_SAMPLE, (limit,)).fetchall())
        return [leased_from_row(row) for row in rows]

    # ------------------------------------------------------ operator records

    async def revoke_session(self, session_hash: str, *, expires_at: float, now: float) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM revoked_sessions WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT OR REPLACE INTO revoked_sessions (session_hash, expires_at) VALUES (?, ?)",
                (session_hash, expires_at),
            )

        await self._write(run)

    async def session_revoked(self, session_hash: str) -> bool:
        row = await self._read(
            lambda c: c.execute(
                "SELECT 1 FROM revoked_sessions WHERE session_hash = ?", (session_hash,)
            ).fetchone()
        )
        return row is not None

    async def record_audit(
        self, *, at: float, actor: str, action: str, target: str, count: int, origin: str
    ) -> None:
        await self._write(
            lambda c: c.execute(
                "INSERT INTO operator_audit (at, actor, action, target, count, origin) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (at, actor, action, target, count, origin),
            )
        )

    async def audit_log(self, *, limit: int = 100) -> list[AuditRecord]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT id, at, actor, action, target, count, origin FROM operator_audit "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [AuditRecord(*row) for row in rows]


# ------------------------------------------------------------------ read helpers


def _pixel_due(conn: sqlite3.Connection, pixel_id: str, now: float) -> bool:
    ready = conn.execute(
        "SELECT 1 FROM queue WHERE pixel_id = ? AND state = 0 LIMIT 1", (pixel_id,)
    ).fetchone()
    if ready:
        return True
    waiting = conn.execute(
        "SELECT 1 FROM queue INDEXED BY queue_not_ready "
        "WHERE pixel_id = ? AND state > 0 AND available_at <= ? LIMIT 1",
        (pixel_id, now),
    ).fetchone()
    return waiting is not None


def _pixel_next_due(conn: sqlite3.Connection, pixel_id: str) -> float | None:
    # A ready row is due already; its queued_at is a moment at or before "now".
    ready = conn.execute(
        "SELECT queued_at FROM queue WHERE pixel_id = ? AND state = 0 LIMIT 1", (pixel_id,)
    ).fetchone()
    not_ready = conn.execute(
        "SELECT min(available_at) FROM queue INDEXED BY queue_not_ready "
        "WHERE pixel_id = ? AND state > 0",
        (pixel_id,),
    ).fetchone()[0]
    times = [t for t in (ready[0] if ready else None, not_ready) if t is not None]
    return min(times) if times else None


def _queue_stats(conn: sqlite3.Connection) -> QueueStats:
    pixel_rows = [_pixel_stats(conn, pixel_id) for pixel_id in _distinct_pixels(conn)]
    # Rows are inserted in time order, so the lowest id is the oldest queued row.
    oldest = conn.execute("SELECT queued_at FROM queue ORDER BY id LIMIT 1").fetchone()
    reason_rows = conn.execute(
        "SELECT reason, count(*) FROM dead_letters GROUP BY reason"
    ).fetchall()
    return queue_stats(pixel_rows, oldest[0] if oldest else None, reason_rows)


def _pixel_stats(conn: sqlite3.Connection, pixel_id: str) -> tuple[str, int, int, float | None]:
    """``(pixel_id, depth, leased, earliest deadline)``; the deadline per state so that
    each lookup uses the ``(pixel_id, state, deadline)`` index."""
    depth = conn.execute("SELECT count(*) FROM queue WHERE pixel_id = ?", (pixel_id,)).fetchone()[0]
    leased = conn.execute(
        "SELECT count(*) FROM queue WHERE pixel_id = ? AND state = 2", (pixel_id,)
    ).fetchone()[0]
    deadlines = [
        conn.execute(
            "SELECT min(deadline) FROM queue WHERE pixel_id = ? AND state = ?",
            (pixel_id, state),
        ).fetchone()[0]
        for state in (READY, WAITING, LEASED)
    ]
    known = [d for d in deadlines if d is not None]
    return pixel_id, depth, leased, min(known) if known else None
