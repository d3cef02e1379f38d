"""The shared outbox: one PostgreSQL database behind any number of gateway replicas.

Why this shape (``docs/postgres.md`` has the long version):

* **The database arbitrates, not the replicas.**  Dedup is the primary key of
  ``capirelay_dedup`` (``INSERT ... ON CONFLICT``), so two replicas receiving the
  same webhook queue it once.  Leases are ``SELECT ... FOR UPDATE SKIP LOCKED``
  with an expiry (``available_at``): replicas lease the same pixel concurrently
  without blocking each other, and the rows of a replica that died mid-batch
  come back when its lease ends.  Nothing is coordinated in memory.
* **One statement per operation, one round trip per request.**  Enqueue sends
  the whole request as parallel arrays (``unnest``); ack, reschedule, release
  and dead-letter take one ``bigint[]`` of ids.  Every statement lives in
  ``queries.sql`` (beside this module) under a name, with its locking explained there.
* **Durable before acknowledged.**  Each call runs in its own transaction on a
  pooled connection (``psycopg_pool.AsyncConnectionPool``) and returns after
  COMMIT, so ingest answers 202 only for committed events.
* **Wake-up by LISTEN/NOTIFY, polling as the fallback.**  Enqueue announces the
  pixels it queued (``pg_notify`` at commit); a dedicated listening connection
  turns the announcements into :meth:`wait_for_work` results, so a replica
  delivers events another replica accepted within milliseconds.  When the
  listener is down the engine's ``poll_seconds`` loop still finds everything.
* **Leases are named.**  Each lease call stamps its rows with a fresh lease id
  (``LeasedEvent.lease_id``); settle and :meth:`extend_lease` calls given it touch
  only rows still held under it, so a batch whose lease ran out and was taken by
  another replica (or by this one again) is never settled twice.
* **Holds shared across replicas.**  A replica whose breaker opens or that Meta
  throttles writes a hold (``capirelay_pixel_state``) that every replica's
  lease statement honours.
* **Storage failures are an answer, not a crash.**  A lost connection, a
  database that is down or a pool that cannot hand out a connection in time
  becomes :class:`StorageUnavailable` (ingest answers 503 and acknowledges
  nothing); the pool replaces broken connections, so calls succeed again as
  soon as the database is back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from capirelay.outbox._rows import (
    dead_letter_from_row,
    dlq_filter_values,
    leased_from_row,
    require_purge_target,
)
from capirelay.outbox.base import (
    ATTEMPT_LOG_LIMIT,
    DEDUP_EXPIRY_CHUNK,
    DEDUP_WINDOW_SECONDS,
    PROMOTE_FACTOR,
    Attempt,
    DeadLetter,
    DeadLetterReason,
    DLQFilter,
    EnqueueStatus,
    LeasedEvent,
    NewEvent,
    Outbox,
    OutboxViews,
    QueueStats,
    RequeueResult,
    StorageUnavailable,
)
from capirelay.outbox.postgres._coalesce import EnqueueCoalescer
from capirelay.outbox.postgres._enqueue import (
    FreshClaims,
    enqueue_in_one_statement,
    enqueue_in_two_steps,
    pick,
)
from capirelay.outbox.postgres._leases import lock_lease, settle, unlease
from capirelay.outbox.postgres._operator import PostgresOperatorRecords
from capirelay.outbox.postgres._statements import CHANNEL, QUERIES, load_queries
from capirelay.outbox.postgres._stats import exact_stats, shared_stats
from capirelay.outbox.postgres.migrate import migrate
from capirelay.outbox.postgres.receipts import PostgresReceipts, insert_dead_letter_receipts
from capirelay.tasks import cancel_and_wait

__all__ = [
    "CHANNEL",
    "QUERIES",
    "PostgresOutbox",
    "error_kind",
    "load_queries",
    "postgres_conninfo",
    "postgres_refusal",
]

log = logging.getLogger("capirelay.outbox")

T = TypeVar("T")

# Deadlocks and serialization failures are the database asking for a retry, not an outage.
TRANSIENT_RETRIES: Final = 3
LISTEN_RECONNECT_MAX: Final = 5.0
PING_TIMEOUT: Final = 1.0
# A row given back (or retried) inside the deadline span of other leases in flight waits
# for them to settle before a lease reads it again (`lease` in queries.sql, migration
# 0013), unless its deadline is this close: then it goes first, as strict EDF would have it.
LEASE_URGENT_SECONDS: Final = 3600.0
# expire_dedup's first chunk starts below every key: (seen_at, event_id, event_name,
# pixel_id) in the seen_at index's order, ties in key order.
DEDUP_EXPIRY_START: Final = {
    "after_seen_at": float("-inf"),
    "after_event_id": "",
    "after_event_name": "",
    "after_pixel_id": "",
}
# Below this order-ledger cap, pruning always walks to the cap (see _ledger_may_reach).
LEDGER_CAP_ALWAYS_WALKED: Final = 100_000

_POSTGRES_SCHEMES = ("postgresql+psycopg://", "postgres://")


def postgres_conninfo(url: str) -> str:
    """The storage URL as libpq understands it (``postgresql+psycopg://`` is SQLAlchemy's).

    :class:`ValueError` (naming the fix, never the URL) for a URL libpq would read
    wrongly and then quote in its error: an ``@``, ``/`` or stray ``%`` in the user name
    or password, or a host or port that cannot be read."""
    for scheme in _POSTGRES_SCHEMES:
        if url.startswith(scheme):
            url = "postgresql://" + url[len(scheme) :]
            break
    _check_url_shape(url)
    return url


_NOT_PERCENT_ENCODING = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _check_url_shape(url: str) -> None:
    """Refuse what libpq splits in the wrong place: it takes the user information up to
    the first ``@`` (a password holding one leaves the rest as the host name, which its
    error then prints), and an unencoded ``%`` or a bad port ends in an error that quotes
    the text around it."""
    rest = url.split("://", 1)[1] if "://" in url else url
    before_query = rest.split("?", 1)[0].split("#", 1)[0]
    authority = before_query.split("/", 1)[0]
    userinfo, at, _ = authority.rpartition("@")
    fix = "percent-encode it in the storage URL"
    if "@" in userinfo:
        raise ValueError(f"the PostgreSQL URL's user name or password holds '@': {fix} (%40)")
    if not at and "@" in before_query:
        raise ValueError(f"the PostgreSQL URL's user name or password holds '/': {fix} (%2F)")
    if _NOT_PERCENT_ENCODING.search(userinfo):
        raise ValueError(
            f"the PostgreSQL URL's user name or password holds a '%' that is not "
            f"percent-encoding: {fix} (%25)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it checks it
    except ValueError:
        raise ValueError(
            "the PostgreSQL URL's host or port cannot be read: the port is a number, an "
            "IPv6 address goes in brackets (postgresql://user@[::1]:5432/capirelay)"
        ) from None


def error_kind(exc: BaseException) -> str:
    """``OperationalError, SQLSTATE 08006``: a database failure's class and SQLSTATE, no
    URL, password or row data."""
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}, SQLSTATE {sqlstate}" if sqlstate else type(exc).__name__


def storage_error(exc: BaseException) -> StorageUnavailable:
    """Describe a database failure by class and SQLSTATE: no URL, password or row data."""
    return StorageUnavailable(f"PostgreSQL outbox unavailable ({error_kind(exc)})")


def postgres_refusal(exc: BaseException) -> str | None:
    """One line for a command to print when PostgreSQL refused what it asked (no rights
    on the schema, a search_path naming no schema, a connection option libpq does not
    know): the server's or libpq's first line, which names the cause and no password
    (the URL's shape is checked first, :func:`postgres_conninfo`), its class and
    SQLSTATE; ``None`` for anything that is not a psycopg error."""
    if not isinstance(exc, psycopg.Error):
        return None
    first = (str(exc).strip().splitlines() or [""])[0]
    sqlstate = getattr(exc, "sqlstate", None)
    hint = ""
    if sqlstate == "42501":
        hint = (
            "; the role needs CREATE on the schema the outbox goes in "
            "(GRANT CREATE ON SCHEMA public TO the role, or a schema of its own)"
        )
    elif sqlstate == "3F000":
        hint = "; create that schema, or fix search_path in the URL's options"
    return f"PostgreSQL refused: {first} ({error_kind(exc)}){hint}"


_UNAVAILABLE = (psycopg.OperationalError, PoolTimeout, PoolClosed)
# What a row's own values cause (SQLSTATE class 22 "data exception", e.g. U+0000 in text;
# class 54 "program limit exceeded", e.g. an index row too large): the row's problem, not
# the database's.  ProgramLimitExceeded is an OperationalError subclass, so it is checked
# before _UNAVAILABLE everywhere.
_BAD_DATA = (psycopg.DataError, psycopg.errors.ProgramLimitExceeded)


def _jsonb_text(value: Any) -> str:
    """JSON for a jsonb column: jsonb refuses the \\u0000 escape, so NUL becomes U+FFFD."""
    return orjson.dumps(value).decode().replace("\\u0000", "\\ufffd")


def _matches_nothing(flt: DLQFilter | None) -> bool:
    """A filter text holding U+0000 matches no stored row (text cannot hold it), and
    PostgreSQL would refuse the query itself: answer "nothing" rather than fail."""
    values = dlq_filter_values(flt).values()
    return any(isinstance(value, str) and "\x00" in value for value in values)


def _ids(ids: Sequence[int]) -> list[int]:
    return [int(i) for i in ids]


class PostgresOutbox(PostgresReceipts, PostgresOperatorRecords, Outbox, OutboxViews):
    """The :class:`Outbox` on PostgreSQL, safe to share between any number of processes.

    ``pool_size`` is the most connections this process opens for queue work (plus
    one for LISTEN).  ``migrate`` applies missing migrations on :meth:`open`
    (under an advisory lock, see :mod:`capirelay.outbox.postgres.migrate`); ``listen``
    starts the LISTEN connection behind :meth:`wait_for_work`.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        migrate: bool = True,
        listen: bool = True,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.conninfo = postgres_conninfo(url)
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.migrate_on_open = migrate
        self.listen = listen
        # Leases carry this id so release/reschedule only touch rows this process holds.
        self.owner = uuid.uuid4()
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._announced: set[str] = set()
        self._work = asyncio.Event()
        self.listening = False
        self._coalescer = EnqueueCoalescer(self._enqueue_group)
        # When a group's enqueue is sent without ON CONFLICT (postgres/_enqueue.py).
        self._fresh_claims = FreshClaims()

    # ------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        if self._pool is not None:
            return
        if self.migrate_on_open:
            await self._migrate()
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            self.conninfo,
            min_size=min(2, self.pool_size),
            max_size=self.pool_size,
            open=False,
            timeout=self.connect_timeout,
            kwargs={"connect_timeout": max(1, round(self.connect_timeout))},
            name="capirelay-outbox",
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
        except _UNAVAILABLE as exc:
            await pool.close()
            raise storage_error(exc) from exc
        self._pool = pool
        if self.listen:
            self._listener = asyncio.create_task(self._listen(), name="capirelay-outbox-listen")

    async def _migrate(self) -> None:
        try:
            conn = await AsyncConnection.connect(
                self.conninfo,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout)),
            )
        except _UNAVAILABLE as exc:
            raise storage_error(exc) from exc
        async with conn:
            await migrate(conn)

    async def close(self) -> None:
        pool, listener = self._pool, self._listener
        self._pool = self._listener = None
        await cancel_and_wait(listener)
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _transaction(
        self, timeout: float | None = None, *, autocommit: bool = False
    ) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection in a transaction that has COMMITted when the block exits.

        ``timeout``: longest wait for a connection (default ``connect_timeout``).
        ``autocommit``: no BEGIN and no COMMIT sent, each statement is its own
        transaction (for work that is ONE statement: one round trip instead of three);
        the connection goes back to the pool in transaction mode (``_transactional``).
        Deadlocks and serialization failures pass through for :meth:`_in_transaction`
        to retry; every other connection-level failure is :class:`StorageUnavailable`.
        """
        pool = self._pool
        if pool is None:
            raise StorageUnavailable("the outbox is not open")
        try:
            async with pool.connection(timeout=timeout) as conn:
                if not autocommit:
                    yield conn
                    return
                await conn.set_autocommit(True)
                try:
                    yield conn
                finally:
                    await _transactional(conn)
        except (psycopg.errors.TransactionRollback, *_BAD_DATA):
            raise
        except _UNAVAILABLE as exc:
            raise storage_error(exc) from exc

    async def _in_transaction(
        self, work: Callable[[AsyncConnection[Any]], Awaitable[T]], *, autocommit: bool = False
    ) -> T:
        """Run ``work`` in one transaction (``autocommit``: work that is one statement, run
        as its own transaction); retried whole when the database asks for it."""
        attempt = 1
        while True:
            try:
                async with self._transaction(autocommit=autocommit) as conn:
                    return await work(conn)
            except psycopg.errors.TransactionRollback as exc:
                if attempt >= TRANSIENT_RETRIES:
                    raise storage_error(exc) from exc
                log.info("outbox: %s, retrying the transaction", type(exc).__name__)
                attempt += 1

    async def _run(self, name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run one named statement in its own transaction; its rows (if any)."""

        async def work(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(QUERIES[name], params)
            return await cur.fetchall() if cur.description else []

        return await self._in_transaction(work)

    async def _rowcount(self, name: str, params: Mapping[str, Any]) -> int:
        """Run one named statement in its own transaction; how many rows it changed."""

        async def work(conn: AsyncConnection[Any]) -> int:
            return (await conn.execute(QUERIES[name], params)).rowcount

        return await self._in_transaction(work)

    async def ping(self) -> bool:
        if self._pool is None:
            return False
        try:
            # Readiness probes time out after a second or two: answer within PING_TIMEOUT.
            async with self._transaction(timeout=PING_TIMEOUT) as conn:
                cur = await conn.execute(QUERIES["ping"])
                return bool(await cur.fetchone())
        except StorageUnavailable:
            return False

    # ----------------------------------------------------------------- queue

    async def enqueue(self, events: Sequence[NewEvent], *, now: float) -> list[EnqueueStatus]:
        # The enqueues of one event-loop iteration share one transaction (_coalesce.py).
        return await self._coalescer.enqueue(events, now)

    async def _enqueue_group(self, events: Sequence[NewEvent], now: float) -> list[EnqueueStatus]:
        """One transaction for ``events`` (one request's, or a group of them in call order)."""
        if not events:
            return []
        picked = pick(events)
        one_statement = picked.one_statement
        try:
            if one_statement is not None:
                queued = await self._enqueue_one_statement(events, one_statement, now)
            else:
                queued = await self._in_transaction(
                    lambda conn: enqueue_in_two_steps(
                        conn, QUERIES, events, picked.candidates, now, CHANNEL
                    )
                )
        except _BAD_DATA as exc:
            if len(events) == 1:
                log.warning("outbox: an event's values cannot be stored (%s)", type(exc).__name__)
                return [EnqueueStatus.REJECTED]
            # Nothing of the request was stored (one transaction): bisect to the row(s) at
            # fault so the others are queued.  Halves in order keep "first occurrence of a
            # key wins" (the second half sees the first half's claims as duplicates).
            middle = len(events) // 2
            first = await self._enqueue_group(events[:middle], now)
            return first + await self._enqueue_group(events[middle:], now)
        return [
            EnqueueStatus.QUEUED if index in queued else EnqueueStatus.DUPLICATE
            for index in range(len(events))
        ]

    async def _enqueue_one_statement(
        self, events: Sequence[NewEvent], picked: Sequence[int], now: float
    ) -> set[int]:
        """:func:`enqueue_in_one_statement`, fresh when :class:`FreshClaims` says so, then
        arbitrating if a key existed after all (the fresh statement wrote nothing)."""

        async def send(fresh: bool) -> set[int]:
            return await self._in_transaction(
                lambda conn: enqueue_in_one_statement(
                    conn, QUERIES, events, picked, now, CHANNEL, fresh=fresh
                ),
                autocommit=True,
            )

        if self._fresh_claims.fresh():
            try:
                queued = await send(fresh=True)
            except psycopg.errors.UniqueViolation:
                self._fresh_claims.failed()
            else:
                self._fresh_claims.succeeded()
                return queued
        return await send(fresh=False)

    async def holds_claim(self, event: NewEvent, *, now: float) -> bool:
        params = {
            "pixel_id": event.pixel_id,
            "event_name": event.event_name,
            "event_id": event.event_id,
            "cutoff": now - DEDUP_WINDOW_SECONDS,
            "order_key": event.order_key,
        }
        rows = await self._run("holds_claim", params)
        return bool(rows[0][0])

    async def lease(
        self, pixel_id: str, *, limit: int, lease_seconds: float, now: float
    ) -> list[LeasedEvent]:
        if limit <= 0:
            return []
        promote = {"pixel_id": pixel_id, "now": now, "promote": limit * PROMOTE_FACTOR}
        lease_id = uuid.uuid4().hex
        lease = {
            "pixel_id": pixel_id,
            "now": now,
            "limit": limit,
            "lease_until": now + lease_seconds,
            "urgent_before": now + LEASE_URGENT_SECONDS,
            "owner": self.owner,
            "lease_id": lease_id,
        }

        async def work(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            # Pipelined: the statements go out in one round trip (the COMMIT is a second).
            # The pixel's lease lock first: leases of a pixel take turns (migration 0010), so
            # the lease reads rows without locking them; then the lapsed leases it may take
            # rows from, so no settle of theirs runs meanwhile.
            async with conn.pipeline():
                await conn.execute(QUERIES["lock_pixel"], {"pixel_id": pixel_id})
                await conn.execute(
                    QUERIES["lock_lapsed_leases"], {"pixel_id": pixel_id, "now": now}
                )
                await conn.execute(QUERIES["promote_due"], promote)
                # Binary results: payloads come back as bytes, not hex text to encode.
                cur = await conn.execute(QUERIES["lease"], lease, binary=True)
                await conn.execute(QUERIES["sweep_leases"], {"pixel_id": pixel_id, "now": now})
            return await cur.fetchall()

        rows = await self._in_transaction(work)
        leased = [leased_from_row(row, lease_id) for row in rows]
        return sorted(leased, key=lambda e: (e.deadline, e.id))

    async def extend_lease(
        self, ids: Sequence[int], *, until: float, now: float, lease_id: str
    ) -> list[int]:
        if until <= now:
            raise ValueError("a lease extension must end after now")
        if not ids:
            return []
        params = {"ids": _ids(ids), "until": until, "owner": self.owner, "lease_id": lease_id}

        async def work(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            async with conn.pipeline():
                await lock_lease(conn, lease_id)
                cur = await conn.execute(QUERIES["extend_lease"], params)
            return await cur.fetchall()

        return sorted(row[0] for row in await self._in_transaction(work))

    async def ack(self, ids: Sequence[int], *, now: float, lease_id: str) -> None:
        if ids:
            params = {"ids": _ids(ids), "lease_id": lease_id}
            await self._in_transaction(lambda conn: settle(conn, lease_id, ids, "ack", params))

    async def reschedule(
        self,
        ids: Sequence[int],
        *,
        next_attempt_at: float,
        attempt: Attempt,
        lease_id: str,
    ) -> None:
        if ids:
            params = {
                "ids": _ids(ids),
                "next_attempt_at": next_attempt_at,
                "attempt": _jsonb_text(attempt.to_dict()),
                "log_limit": ATTEMPT_LOG_LIMIT,
                "lease_id": lease_id,
            }
            await self._in_transaction(
                lambda conn: settle(conn, lease_id, _ids(ids), "reschedule", params)
            )

    async def release(self, ids: Sequence[int], *, lease_id: str) -> None:
        # Taking the ids off their lease is all: the rows were never written by the lease.
        if ids:
            await self._in_transaction(lambda conn: settle(conn, lease_id, _ids(ids), None, {}))

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
        params = {
            "ids": _ids(ids),
            "reason": str(reason),
            "error": _jsonb_text(attempt.to_dict()) if attempt else None,
            "log_limit": ATTEMPT_LOG_LIMIT,
            "now": now,
            "lease_id": lease_id,
        }

        async def work(conn: AsyncConnection[Any]) -> None:
            # Receipts first: that locks the rows, so the move takes exactly those.
            # Meta's message may hold U+0000, which neither text nor jsonb can store.
            attempt_dict = orjson.loads(_jsonb_text(attempt.to_dict())) if attempt else None
            await lock_lease(conn, lease_id)
            await insert_dead_letter_receipts(
                conn, _ids(ids), lease_id, str(reason), attempt_dict, now
            )
            await conn.execute(QUERIES["dead_letter"], params)
            await unlease(conn, lease_id, _ids(ids))

        await self._in_transaction(work)

    async def due_pixels(self, *, now: float) -> list[str]:
        return [row[0] for row in await self._run("due_pixels", {"now": now})]

    async def next_due_at(self, pixel_id: str | None = None) -> float | None:
        if pixel_id is None:
            rows = await self._run("next_due_at_any", {})
        else:
            rows = await self._run("next_due_at_pixel", {"pixel_id": pixel_id})
        return rows[0][0] if rows else None

    async def stats(self, *, now: float, max_age: float = 0.0) -> QueueStats:
        # With max_age, shared between replicas: one scan at a time for all (_stats.py).
        if max_age > 0:
            return await self._in_transaction(
                lambda conn: shared_stats(conn, now=now, max_age=max_age)
            )
        return await self._in_transaction(exact_stats)

    async def expire_dedup(self, *, now: float) -> int:
        params: dict[str, Any] = {
            "cutoff": now - DEDUP_WINDOW_SECONDS,
            "chunk": DEDUP_EXPIRY_CHUNK,
            **DEDUP_EXPIRY_START,
        }
        removed = 0
        # Chunked so one expiry never holds many row locks; each chunk commits on its own
        # and the next starts after the last key it took (queries.sql).
        while True:
            [(deleted, taken, *last)] = await self._run("expire_dedup", params)
            removed += deleted
            if taken < DEDUP_EXPIRY_CHUNK:
                return removed
            params.update(zip(DEDUP_EXPIRY_START, last, strict=True))

    async def prune_order_ledger(
        self, *, now: float, retention_seconds: float, max_entries: int
    ) -> int:
        cutoff = now - retention_seconds
        if await self._ledger_may_reach(max_entries):
            beyond_cap = await self._run("order_ledger_cap", {"max_entries": max(0, max_entries)})
            if beyond_cap:
                cutoff = max(cutoff, float(beyond_cap[0][0]))
        params = {"cutoff": cutoff, "chunk": DEDUP_EXPIRY_CHUNK}
        removed = 0
        while True:  # chunked like expire_dedup; each chunk commits on its own
            count = await self._rowcount("prune_order_ledger", params)
            removed += count
            if count < DEDUP_EXPIRY_CHUNK:
                return removed

    async def _ledger_may_reach(self, max_entries: int) -> bool:
        """Whether the cap needs its walk: ``order_ledger_cap`` reads the seen_at index
        from the newest entry down to the cap (an index-only scan, about 50 ns an entry
        here: half a second and the index's pages through the buffer cache for the
        default 10 million), on every replica every 10 minutes, and finds nothing while
        the ledger is below the cap.  A large cap is walked only once the ledger's
        estimated rows reach half of it: the rows per page its last vacuum or analyze
        counted, times the pages it has now (the planner's own estimate, so rows
        inserted since, a bulk import's included, count at once; deleted rows keep
        their pages until vacuum, so deletions only make it walk sooner).  Without a
        count to go by (never vacuumed or analyzed, or counted empty) it walks; a small
        cap (a walk of a few milliseconds) always is, so it is exact."""
        if max_entries < LEDGER_CAP_ALWAYS_WALKED:
            return True
        rows = await self._run("order_ledger_estimate", {})
        if not rows:
            return True
        counted_rows, counted_pages, pages = rows[0]
        if not pages:
            return False  # no pages at all: an empty ledger, nothing to prune
        if counted_rows <= 0 or counted_pages <= 0:
            return True
        return counted_rows / counted_pages * pages >= max_entries / 2

    async def order_ledger_size(self) -> int:
        [(count,)] = await self._run("order_ledger_size", {})
        return int(count)

    # ------------------------------------------------------------ dead letters

    async def dlq_list(
        self, flt: DLQFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        if _matches_nothing(flt):
            return []
        params = {**dlq_filter_values(flt), "limit": limit, "offset": offset}
        return [dead_letter_from_row(row) for row in await self._run("dlq_list", params)]

    async def dlq_get(self, dlq_id: int) -> DeadLetter | None:
        rows = await self._run("dlq_get", {"id": int(dlq_id)})
        return dead_letter_from_row(rows[0]) if rows else None

    async def dlq_requeue(self, ids: Sequence[int], *, now: float) -> RequeueResult:
        if not ids:
            return RequeueResult()
        params = {
            "ids": _ids(ids),
            "now": now,
            "cutoff": now - DEDUP_WINDOW_SECONDS,
            "channel": CHANNEL,
        }
        result = RequeueResult()
        for dlq_id, moved, _ in await self._run("dlq_requeue", params):
            (result.requeued if moved else result.duplicate).append(dlq_id)
        return result

    async def dlq_purge(
        self, ids: Sequence[int] | None = None, flt: DLQFilter | None = None
    ) -> int:
        require_purge_target(ids, flt)
        if ids is not None:
            return await self._rowcount("dlq_purge_ids", {"ids": _ids(ids)})
        if _matches_nothing(flt):
            return 0
        return await self._rowcount("dlq_purge_filter", dlq_filter_values(flt))

    # ------------------------------------------------------ LISTEN / NOTIFY

    async def wait_for_work(self, timeout: float) -> set[str]:
        """Pixels other processes (or this one) queued events for, announced by NOTIFY.

        Without a live listener (``listen=False``, or its connection is down and
        reconnecting) this just waits out ``timeout``: polling covers the gap.
        """
        try:
            # Not wait_for: on Python 3.11 it can swallow the cancellation of a stopping
            # engine when a NOTIFY sets the event at the same moment (gh-86296).
            async with asyncio.timeout(max(timeout, 0.0)):
                await self._work.wait()
        except TimeoutError:
            return set()
        self._work.clear()
        pixels, self._announced = self._announced, set()
        return pixels

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._listen_once()
                delay = 0.1
            except _UNAVAILABLE as exc:
                log.warning(
                    "outbox LISTEN connection lost (%s); polling until it is back",
                    type(exc).__name__,
                )
            finally:
                self.listening = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, LISTEN_RECONNECT_MAX)

    async def _listen_once(self) -> None:
        conn = await AsyncConnection.connect(
            self.conninfo, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
        )
        async with conn:
            await conn.execute(QUERIES["listen_for_work"])
            self.listening = True
            async for notify in conn.notifies():
                self._announced.add(notify.payload)
                self._work.set()


async def _transactional(conn: AsyncConnection[Any]) -> None:
    """A connection used in autocommit (``_transaction``) back in transaction mode before
    the pool lends it again, or closed (the pool then replaces it): never lent out in
    autocommit to work of several statements, which would not be atomic.  Switching
    fails only on a connection that is not idle (a statement cancelled mid-flight) or
    is broken; the pool would close those anyway."""
    try:
        await conn.set_autocommit(False)
    except psycopg.Error:
        await conn.close()
