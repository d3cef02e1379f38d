"""Copy a SQLite outbox into a PostgreSQL one: ``capirelay migrate --from ... --to ...``.

Run it with the gateway stopped.  What moves: the queue (queued, waiting and leased
events; a leased event's lease belonged to the stopped gateway, so it arrives ready to
lease again, attempts and attempt log kept), the dedup keys (with their "still queued"
pins), the order ledger, the dead-letter queue, the receipts, the erasure and operator
audit trails, the revoked dashboard sessions and Meta's diagnostics (checks, history,
last runs, delivered per hour).  What does not: the diagnostics schedule's lease row
(it names a process of the stopped gateway; the next one takes a fresh lease).

The source is first brought to this capirelay's SQLite schema (what the gateway does on
start) and then read inside one SQLite write transaction, so nothing changes under the
copy.  The target is migrated to the latest PostgreSQL schema, and the whole copy
happens in ONE PostgreSQL transaction: each table goes in with ``COPY`` into a temporary
table, then one ``INSERT ... SELECT`` into the real one; the row counts are compared
before COMMIT, so a failed or short copy leaves the target exactly as it was.

A target that already holds rows is refused unless ``merge=True``: then the source's
rows are added, ids are assigned by the target (queue, dead letters, receipts and audit
rows get new ids), and rows the target already has keep the target's version and are
reported as skipped: by key (dedup keys, ledger keys, revoked sessions, diagnostics), or
by their values (a queued event whose dedup key the target holds, because it has seen
that event; the same dead letter, receipt or audit record), so a merge run twice adds
nothing the second time.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from capirelay.outbox.base import StorageUnavailable
from capirelay.outbox.sqlite.writer import take_open_mark

__all__ = ["TABLES", "TableCopy", "TableResult", "TargetNotEmpty", "TransferReport", "transfer"]

Convert = Callable[[Any], Any]


def _json(value: Any) -> Any:
    """SQLite's JSON text for a jsonb column (jsonb refuses \\u0000, as on ingest)."""
    if value is None:
        return None
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text.replace("\\u0000", "\\ufffd")


def _bool(value: Any) -> Any:
    return None if value is None else bool(value)


@dataclass(frozen=True, slots=True)
class TableCopy:
    """One table's move: names on both sides, the columns copied, per-column conversions."""

    label: str
    sqlite: str
    postgres: str
    columns: tuple[str, ...]
    convert: dict[str, Convert] = field(default_factory=dict)
    # Column holding an id the target generates (identity / bigserial); None for keyed tables.
    identity: str | None = None
    # The target's unique key: a merge skips rows it already has.
    key: tuple[str, ...] = ()
    # Extra SQL run on each copied row's values, in the target (e.g. releasing leases).
    fixup: str | None = None
    # Extra SQL run on the target table once the rows are in, not counted (linking keys).
    link: str | None = None
    # Columns that tell a row of an id'd table the target already has: a merge skips a
    # source row when the target holds one with the same values (a merge run twice adds
    # nothing the second time; it added every queue row again, each delivered twice).
    same: tuple[str, ...] = ()
    # Where those values are looked up (default: the table itself).  A queue row is looked
    # up among the dedup keys: an event the target has seen (queued, or delivered within
    # the window) is not queued again.
    seen_in: str | None = None


_QUEUE_COLUMNS: Final = (
    "id", "pixel_id", "event_name", "event_id", "payload", "event_time", "deadline",
    "test_event_code", "source", "queued_at", "attempts", "state", "available_at",
    "attempt_log",
)  # fmt: skip
_DLQ_COLUMNS: Final = (
    "id", "pixel_id", "event_name", "event_id", "payload", "event_time", "deadline",
    "test_event_code", "source", "queued_at", "reason", "error", "attempt_log", "dead_at",
)  # fmt: skip
_RECEIPT_COLUMNS: Final = (
    "id", "pixel_id", "event_name", "event_id", "outcome", "source", "recorded_at",
    "received_at", "first_attempt_at", "last_attempt_at", "attempts", "fbtrace_id",
    "events_received", "test_event_code", "reason", "problems", "attempt_log", "order_key",
    "identity", "count",
)  # fmt: skip
_CHECK_COLUMNS: Final = (
    "pixel_id", "key", "source", "failing", "result", "title", "message", "action_uri",
    "changed_at", "checked_at",
)  # fmt: skip

# In dependency-free order; every persistent table of both schemas is named here (the
# tests compare this list with the SQLite schema, so a new table cannot be forgotten).
TABLES: Final[tuple[TableCopy, ...]] = (
    TableCopy(
        "queue",
        "queue",
        "capirelay_queue",
        _QUEUE_COLUMNS,
        {"attempt_log": _json},
        identity="id",
        same=("pixel_id", "event_name", "event_id"),
        seen_in="capirelay_dedup",
        # The stopped gateway's leases end now: leased events are ready again.
        fixup="UPDATE {table} SET state = 0 WHERE state = 2",
    ),
    TableCopy(
        "dedup keys",
        "dedup",
        "capirelay_dedup",
        ("pixel_id", "event_name", "event_id", "seen_at"),
        key=("event_id", "event_name", "pixel_id"),
        # SQLite's "queued" pin becomes the queue row the key names (PostgreSQL 0009): a
        # key is pinned while its event is in the queue, copied just before.
        link=(
            "UPDATE {table} AS k SET queue_id = q.id FROM capirelay_queue AS q "
            "WHERE q.event_id = k.event_id AND q.event_name = k.event_name "
            "AND q.pixel_id = k.pixel_id AND k.queue_id IS NULL"
        ),
    ),
    TableCopy(
        "order ledger", "order_ledger", "capirelay_order_ledger", ("key", "seen_at"), key=("key",)
    ),
    TableCopy(
        "dead letters",
        "dead_letters",
        "capirelay_dead_letters",
        _DLQ_COLUMNS,
        {"error": _json, "attempt_log": _json},
        identity="id",
        same=("pixel_id", "event_name", "event_id", "dead_at"),
    ),
    TableCopy(
        "receipts",
        "receipts",
        "capirelay_receipts",
        _RECEIPT_COLUMNS,
        {"problems": _json, "attempt_log": _json},
        identity="id",
        same=("pixel_id", "event_name", "event_id", "outcome", "recorded_at"),
    ),
    TableCopy(
        "erasure audit",
        "erasures",
        "capirelay_erasures",
        (
            "id",
            "requested_at",
            "field",
            "value_sha256",
            "pixel_id",
            "queued",
            "dead_letters",
            "receipts",
        ),
        identity="id",
        same=("requested_at", "field", "value_sha256", "pixel_id"),
    ),
    TableCopy(
        "operator audit",
        "operator_audit",
        "capirelay_operator_audit",
        ("id", "at", "actor", "action", "target", "count", "origin"),
        identity="id",
        same=("at", "actor", "action", "target", "origin"),
    ),
    TableCopy(
        "revoked sessions",
        "revoked_sessions",
        "capirelay_revoked_sessions",
        ("session_hash", "expires_at"),
        key=("session_hash",),
    ),
    TableCopy(
        "Meta checks",
        "meta_checks",
        "capirelay_meta_checks",
        _CHECK_COLUMNS,
        {"failing": _bool},
        key=("pixel_id", "key"),
    ),
    TableCopy(
        "Meta check history",
        "meta_check_history",
        "capirelay_meta_check_history",
        ("id", "pixel_id", "key", "failing", "result", "title", "message", "at"),
        {"failing": _bool},
        identity="id",
        same=("pixel_id", "key", "at", "failing", "result"),
    ),
    TableCopy(
        "Meta runs",
        "meta_runs",
        "capirelay_meta_runs",
        ("pixel_id", "ran_at", "error", "summary"),
        key=("pixel_id",),
    ),
    TableCopy(
        "delivered per hour",
        "delivered_hourly",
        "capirelay_delivered_hourly",
        ("pixel_id", "event_name", "hour", "sent", "acknowledged"),
        key=("pixel_id", "hour", "event_name"),
    ),
)
# SQLite tables deliberately left behind, and why (checked by the tests as well).
NOT_COPIED: Final = {"meta_lease": "the stopped gateway's diagnostics schedule lease"}


class TargetNotEmpty(StorageUnavailable):
    """The PostgreSQL schema already holds rows and no merge was asked for."""


@dataclass(frozen=True, slots=True)
class TableResult:
    label: str
    source_rows: int
    copied: int
    skipped: int  # merge only: keys the target already had


@dataclass(frozen=True, slots=True)
class TransferReport:
    sqlite_version_before: int
    sqlite_version: int
    postgres_migrations_applied: tuple[int, ...]
    released_leases: int
    tables: tuple[TableResult, ...]

    @property
    def total(self) -> int:
        return sum(t.copied for t in self.tables)


def _begin_waiting(
    source: sqlite3.Connection, busy_timeout: float, on_wait: Callable[[float], None] | None
) -> None:
    """``BEGIN IMMEDIATE`` on the source; if another process holds its write lock, say so
    through ``on_wait`` and wait up to ``busy_timeout`` seconds for it."""
    source.execute("PRAGMA busy_timeout = 0")
    try:
        source.execute("BEGIN IMMEDIATE")
        return
    except sqlite3.OperationalError:
        if on_wait is not None:
            on_wait(busy_timeout)
    source.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    source.execute("BEGIN IMMEDIATE")


# The tables every capirelay SQLite outbox has had since its first schema version.
_OUTBOX_TABLES: Final = ("queue", "dedup")


def _open_source(path: str, busy_timeout: float) -> tuple[sqlite3.Connection, int, int]:
    from capirelay.outbox.sqlite import migrate as sqlite_migrate

    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise StorageUnavailable(
            f"--from: cannot read the SQLite file {path!r} ({exc.strerror}); "
            "pass the gateway's storage URL, e.g. sqlite:///./capirelay.db"
        ) from None
    conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    try:
        before = conn.execute("PRAGMA user_version").fetchone()[0]
        if before == 0:
            raise StorageUnavailable(
                f"--from: {path!r} is not a capirelay outbox (no schema version); check the path"
            )
        # Another program's database with a schema version of its own: refused before
        # the upgrade below could add capirelay's tables to it.
        found = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
                _OUTBOX_TABLES,
            )
        }
        if found != set(_OUTBOX_TABLES):
            raise StorageUnavailable(
                f"--from: {path!r} is not a capirelay outbox (it has no queue and dedup "
                "tables); nothing was changed in it; check the path"
            )
        after = sqlite_migrate(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise StorageUnavailable(f"--from: cannot open {path!r} as SQLite ({exc})") from None
    except BaseException:
        conn.close()
        raise
    return conn, before, after


def _target_rows(cur: psycopg.Cursor[Any], tables: Sequence[TableCopy]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table in tables:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.postgres)))
        row = cur.fetchone()
        counts[table.postgres] = int(row[0]) if row else 0
    return counts


def _copy_table(
    source: sqlite3.Connection, cur: psycopg.Cursor[Any], table: TableCopy, *, merge: bool
) -> tuple[int, int, int]:
    """Copy one table; returns (source rows, rows inserted, leases released)."""
    columns = table.columns
    if merge and table.identity:
        columns = tuple(c for c in columns if c != table.identity)
    staging = sql.Identifier(f"capirelay_transfer_{table.sqlite}")
    cur.execute(
        sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(
            staging, sql.Identifier(table.postgres)
        )
    )
    if merge and table.identity:
        cur.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(
                staging, sql.Identifier(table.identity)
            )
        )
    idents = sql.SQL(", ").join(map(sql.Identifier, columns))
    converters = [table.convert.get(c) for c in columns]
    source_rows = 0
    # Names come from TABLES (constants), never from input.  WITHOUT ROWID tables are
    # read in their primary key's order, the others in rowid order.
    order_by = ", ".join(table.key) if table.key and not table.identity else "rowid"
    select = f"SELECT {', '.join(columns)} FROM {table.sqlite} ORDER BY {order_by}"  # noqa: S608
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(staging, idents)) as copy:
        for row in source.execute(select):
            copy.write_row(
                [v if fn is None else fn(v) for v, fn in zip(row, converters, strict=True)]
            )
            source_rows += 1
    released = 0
    if table.fixup:
        cur.execute(sql.SQL(table.fixup).format(table=staging))
        released = max(cur.rowcount, 0)
    overriding = (
        sql.SQL("OVERRIDING SYSTEM VALUE ") if table.identity and not merge else sql.SQL("")
    )
    conflict: sql.Composable = sql.SQL("")
    if merge and table.key:
        conflict = sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(
            sql.SQL(", ").join(map(sql.Identifier, table.key))
        )
    unseen: sql.Composable = sql.SQL("")
    if merge and table.same:
        matches = sql.SQL(" AND ").join(
            sql.SQL("d.{c} IS NOT DISTINCT FROM s.{c}").format(c=sql.Identifier(c))
            for c in table.same
        )
        unseen = sql.SQL(" WHERE NOT EXISTS (SELECT 1 FROM {} AS d WHERE {})").format(
            sql.Identifier(table.seen_in or table.postgres), matches
        )
    order = (
        sql.SQL(" ORDER BY {}").format(sql.Identifier(table.identity))
        if (table.identity and not merge)
        else sql.SQL("")
    )
    cur.execute(
        sql.SQL("INSERT INTO {} ({}) {}SELECT {} FROM {} AS s{}{}{}").format(
            sql.Identifier(table.postgres),
            idents,
            overriding,
            idents,
            staging,
            unseen,
            order,
            conflict,
        )
    )
    inserted = max(cur.rowcount, 0)
    if table.link:
        cur.execute(sql.SQL(table.link).format(table=sql.Identifier(table.postgres)))
    if table.identity and not merge and source_rows:
        # Ids generated after the move continue above the copied ones.
        cur.execute(
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence({}, {}), (SELECT max({}) FROM {}))"
            ).format(
                sql.Literal(table.postgres),
                sql.Literal(table.identity),
                sql.Identifier(table.identity),
                sql.Identifier(table.postgres),
            )
        )
    return source_rows, inserted, released


def transfer(
    sqlite_path: str,
    postgres_conninfo: str,
    *,
    merge: bool = False,
    busy_timeout: float = 30.0,
    on_wait: Callable[[float], None] | None = None,
) -> TransferReport:
    """Copy every persistent table of the SQLite outbox at ``sqlite_path`` into PostgreSQL.

    Raises :class:`TargetNotEmpty` when the target holds rows and ``merge`` is false,
    :class:`StorageUnavailable` for an unreadable source or unreachable target, and
    ``RuntimeError`` when the counts after the copy disagree (nothing is committed then).
    ``busy_timeout``: how long to wait for another process's write lock on the SQLite file;
    ``on_wait(busy_timeout)`` is called first when that lock is not free at once.
    """
    # No gateway may have the outbox open during the copy, nor open it meanwhile.
    held = take_open_mark(Path(f"{sqlite_path}-writer"))
    try:
        return _copy_file(sqlite_path, postgres_conninfo, merge, busy_timeout, on_wait)
    finally:
        if held is not None:
            os.close(held)


def _copy_file(
    sqlite_path: str,
    postgres_conninfo: str,
    merge: bool,
    busy_timeout: float,
    on_wait: Callable[[float], None] | None,
) -> TransferReport:
    from capirelay.outbox.postgres import error_kind
    from capirelay.outbox.postgres.migrate import migrate_url

    source, version_before, version = _open_source(sqlite_path, busy_timeout)
    try:
        applied = asyncio.run(migrate_url(postgres_conninfo))
        try:
            target = psycopg.connect(postgres_conninfo, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise StorageUnavailable(
                f"--to: PostgreSQL unreachable ({type(exc).__name__})"
            ) from None
        with target:
            # A write transaction on the source: nothing changes it while the copy runs.
            try:
                _begin_waiting(source, busy_timeout, on_wait)
            except sqlite3.OperationalError:
                raise StorageUnavailable(
                    "--from: the SQLite file stays locked by another process; stop the "
                    "gateway (and anything else using the file), then run this again"
                ) from None
            try:
                report = _copy_all(source, target, merge=merge)
                target.commit()
            except psycopg.Error as exc:
                target.rollback()
                raise StorageUnavailable(
                    f"--to: PostgreSQL refused the copy ({error_kind(exc)}); nothing was committed"
                ) from None
            except BaseException:
                target.rollback()
                raise
            finally:
                source.execute("ROLLBACK")
    finally:
        source.close()
    released, results = report
    return TransferReport(version_before, version, tuple(applied), released, results)


def _copy_all(
    source: sqlite3.Connection, target: psycopg.Connection[Any], *, merge: bool
) -> tuple[int, tuple[TableResult, ...]]:
    with target.cursor() as cur:
        before = _target_rows(cur, TABLES)
        occupied = {name: n for name, n in before.items() if n}
        if occupied and not merge:
            listed = ", ".join(f"{name} ({n} rows)" for name, n in occupied.items())
            raise TargetNotEmpty(
                f"--to: the PostgreSQL schema already holds rows: {listed}; point --to at an "
                "empty database or schema, or pass --merge to add the SQLite rows to them"
            )
        results: list[TableResult] = []
        released = 0
        for table in TABLES:
            source_rows, inserted, freed = _copy_table(source, cur, table, merge=merge)
            released += freed
            results.append(TableResult(table.label, source_rows, inserted, source_rows - inserted))
        after = _target_rows(cur, TABLES)
    for table, result in zip(TABLES, results, strict=True):
        grown = after[table.postgres] - before[table.postgres]
        expected = result.source_rows if not merge else result.copied
        if grown != expected or (not merge and result.copied != result.source_rows):
            raise RuntimeError(
                f"{table.label}: {result.source_rows} rows in SQLite but {grown} arrived in "
                "PostgreSQL; nothing was committed"
            )
        if merge and not table.key and not table.same and result.skipped:
            raise RuntimeError(
                f"{table.label}: {result.skipped} rows did not arrive; nothing was committed"
            )
    return released, tuple(results)
