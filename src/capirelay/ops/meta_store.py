"""Where the diagnostics schedule keeps its results, on either storage backend.

Tables (``outbox/{postgres,sqlite}/migrations/000N_meta_diagnostics.sql``):
the latest result of every check per pixel, one history row per transition
(a check starting or stopping to fail), the last run per pixel with a JSON
summary, the events Meta acknowledged per pixel, event name and hour, and a
lease row so that one replica at a time runs the schedule.

The store reuses the outbox's own connections (the SQLite writer thread, the
PostgreSQL pool): :func:`meta_store_for` picks the implementation for an open
:class:`~capirelay.outbox.Outbox`.  Nothing here holds personal data: check
texts come from Meta, counts are counts.
"""

from __future__ import annotations

import abc
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from capirelay.outbox import Outbox

__all__ = [
    "CheckChange",
    "CheckResult",
    "CheckState",
    "DeliveredHour",
    "MetaStore",
    "RunRecord",
    "meta_store_for",
]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check as fetched this run: ``source`` is ``da_checks`` or ``dataset_quality``."""

    key: str
    source: str
    failing: bool
    result: str
    title: str
    message: str
    action_uri: str = ""


@dataclass(frozen=True, slots=True)
class CheckState:
    pixel_id: str
    key: str
    source: str
    failing: bool
    result: str
    title: str
    message: str
    action_uri: str
    changed_at: float
    checked_at: float


@dataclass(frozen=True, slots=True)
class CheckChange:
    """A transition: ``failing`` is the new state."""

    pixel_id: str
    key: str
    failing: bool
    result: str
    title: str
    message: str
    at: float


@dataclass(frozen=True, slots=True)
class RunRecord:
    pixel_id: str
    ran_at: float
    error: str | None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeliveredHour:
    pixel_id: str
    event_name: str
    hour: int
    sent: int
    acknowledged: int


_Statement = tuple[str, Sequence[Any]]


class MetaStore(abc.ABC):
    """Backend-neutral logic over two primitives: a read and a write transaction."""

    prefix = ""

    @abc.abstractmethod
    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    @abc.abstractmethod
    async def _write(self, statements: Sequence[_Statement]) -> list[list[tuple[Any, ...]]]:
        """Run the statements in one transaction; each one's rows."""

    def _sql(self, text: str) -> str:
        return text.format(p=self.prefix)

    # -- the schedule's lease --------------------------------------------------

    async def acquire_lease(self, name: str, holder: str, *, now: float, ttl: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl`` seconds; True when ``holder`` has it."""
        upsert = self._sql(
            "INSERT INTO {p}meta_lease (name, holder, until) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until "
            "WHERE {p}meta_lease.until < ? OR {p}meta_lease.holder = excluded.holder"
        )
        select = self._sql("SELECT holder FROM {p}meta_lease WHERE name = ?")
        results = await self._write([(upsert, (name, holder, now + ttl, now)), (select, (name,))])
        rows = results[-1]
        return bool(rows) and rows[0][0] == holder

    async def release_lease(self, name: str, holder: str) -> None:
        await self._write(
            [(self._sql("DELETE FROM {p}meta_lease WHERE name = ? AND holder = ?"), (name, holder))]
        )

    # -- checks -----------------------------------------------------------------

    async def save_checks(
        self,
        pixel_id: str,
        checks: Sequence[CheckResult],
        *,
        now: float,
        keep: frozenset[str] = frozenset(),
    ) -> list[CheckChange]:
        """Store this run's checks; the transitions against the previous run.

        A check seen failing for the first time is a transition; so is a check that
        failed last time and is passing now or no longer reported at all.  Stored
        checks of a source in ``keep`` (its fetch failed this run) stay as they were.
        """
        previous = {c.key: c for c in await self.latest_checks(pixel_id)}
        changes: list[CheckChange] = []
        statements: list[_Statement] = []
        upsert = self._sql(
            "INSERT INTO {p}meta_checks (pixel_id, key, source, failing, result, title, message, "
            "action_uri, changed_at, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (pixel_id, key) DO UPDATE SET source = excluded.source, "
            "failing = excluded.failing, result = excluded.result, title = excluded.title, "
            "message = excluded.message, action_uri = excluded.action_uri, "
            "changed_at = excluded.changed_at, checked_at = excluded.checked_at"
        )
        history = self._sql(
            "INSERT INTO {p}meta_check_history (pixel_id, key, failing, result, title, message, "
            "at) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        seen: set[str] = set()
        for check in checks:
            if check.key in seen:
                continue
            seen.add(check.key)
            before = previous.get(check.key)
            changed = (before is None and check.failing) or (
                before is not None and before.failing != check.failing
            )
            changed_at = now if changed or before is None else before.changed_at
            statements.append(
                (
                    upsert,
                    (
                        pixel_id,
                        check.key,
                        check.source,
                        check.failing,
                        check.result,
                        check.title,
                        check.message,
                        check.action_uri,
                        changed_at,
                        now,
                    ),
                )
            )
            if changed:
                change = CheckChange(
                    pixel_id,
                    check.key,
                    check.failing,
                    check.result,
                    check.title,
                    check.message,
                    now,
                )
                changes.append(change)
        for key, before in previous.items():
            if key in seen or before.source in keep:
                continue
            statements.append(
                (
                    self._sql("DELETE FROM {p}meta_checks WHERE pixel_id = ? AND key = ?"),
                    (pixel_id, key),
                )
            )
            if before.failing:
                changes.append(
                    CheckChange(
                        pixel_id, key, False, "gone", before.title, "no longer reported", now
                    )
                )
        for change in changes:
            statements.append(
                (
                    history,
                    (
                        change.pixel_id,
                        change.key,
                        change.failing,
                        change.result,
                        change.title,
                        change.message,
                        change.at,
                    ),
                )
            )
        if statements:
            await self._write(statements)
        return changes

    async def latest_checks(self, pixel_id: str | None = None) -> list[CheckState]:
        sql = (
            "SELECT pixel_id, key, source, failing, result, title, message, action_uri, "
            "changed_at, checked_at FROM {p}meta_checks"
        )
        params: tuple[Any, ...] = ()
        if pixel_id is not None:
            sql += " WHERE pixel_id = ?"
            params = (pixel_id,)
        rows = await self._read(self._sql(sql + " ORDER BY pixel_id, failing DESC, key"), params)
        return [
            CheckState(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], r[8], r[9])
            for r in rows
        ]

    async def check_history(
        self, pixel_id: str | None = None, *, limit: int = 100
    ) -> list[CheckChange]:
        sql = "SELECT pixel_id, key, failing, result, title, message, at FROM {p}meta_check_history"
        params: list[Any] = []
        if pixel_id is not None:
            sql += " WHERE pixel_id = ?"
            params.append(pixel_id)
        params.append(limit)
        rows = await self._read(self._sql(sql + " ORDER BY at DESC, id DESC LIMIT ?"), params)
        return [CheckChange(r[0], r[1], bool(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    # -- runs ---------------------------------------------------------------------

    async def save_run(
        self, pixel_id: str, *, ran_at: float, error: str | None, summary: dict[str, Any]
    ) -> None:
        sql = self._sql(
            "INSERT INTO {p}meta_runs (pixel_id, ran_at, error, summary) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (pixel_id) DO UPDATE SET ran_at = excluded.ran_at, "
            "error = excluded.error, summary = excluded.summary"
        )
        await self._write([(sql, (pixel_id, ran_at, error, orjson.dumps(summary).decode()))])

    async def runs(self) -> dict[str, RunRecord]:
        rows = await self._read(
            self._sql("SELECT pixel_id, ran_at, error, summary FROM {p}meta_runs ORDER BY pixel_id")
        )
        return {r[0]: RunRecord(r[0], r[1], r[2], orjson.loads(r[3])) for r in rows}

    # -- delivered per hour ------------------------------------------------------

    async def add_delivered(self, rows: Sequence[DeliveredHour]) -> None:
        sql = self._sql(
            "INSERT INTO {p}delivered_hourly (pixel_id, event_name, hour, sent, acknowledged) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (pixel_id, hour, event_name) DO UPDATE SET "
            "sent = {p}delivered_hourly.sent + excluded.sent, "
            "acknowledged = {p}delivered_hourly.acknowledged + excluded.acknowledged"
        )
        if rows:
            await self._write(
                [(sql, (r.pixel_id, r.event_name, r.hour, r.sent, r.acknowledged)) for r in rows]
            )

    async def delivered(self, pixel_id: str, start: int, end: int) -> list[DeliveredHour]:
        """Hours ``start <= hour < end`` (epoch seconds of the hour's start)."""
        rows = await self._read(
            self._sql(
                "SELECT pixel_id, event_name, hour, sent, acknowledged FROM {p}delivered_hourly "
                "WHERE pixel_id = ? AND hour >= ? AND hour < ? ORDER BY hour, event_name"
            ),
            (pixel_id, start, end),
        )
        return [DeliveredHour(r[0], r[1], int(r[2]), int(r[3]), int(r[4])) for r in rows]

    async def forget_delivered(self, before: int) -> None:
        """Drop hours older than ``before``; Meta's /stats reach back seven days at most."""
        await self._write(
            [(self._sql("DELETE FROM {p}delivered_hourly WHERE hour < ?"), (before,))]
        )


class _SQLiteMetaStore(MetaStore):
    def __init__(self, outbox: Any) -> None:
        self._outbox = outbox

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return conn.execute(sql, tuple(params)).fetchall()

        rows: list[tuple[Any, ...]] = await self._outbox._read(run)
        return rows

    async def _write(self, statements: Sequence[_Statement]) -> list[list[tuple[Any, ...]]]:
        def run(conn: sqlite3.Connection) -> list[list[tuple[Any, ...]]]:
            return [conn.execute(sql, tuple(params)).fetchall() for sql, params in statements]

        results: list[list[tuple[Any, ...]]] = await self._outbox._write(run)
        return results


class _PostgresMetaStore(MetaStore):
    prefix = "capirelay_"

    def __init__(self, outbox: Any) -> None:
        self._outbox = outbox

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return (await self._write([(sql, params)]))[0]

    async def _write(self, statements: Sequence[_Statement]) -> list[list[tuple[Any, ...]]]:
        async def work(conn: Any) -> list[list[tuple[Any, ...]]]:
            out = []
            for sql, params in statements:
                cur = await conn.execute(sql.replace("?", "%s"), tuple(params))
                out.append(await cur.fetchall() if cur.description else [])
            return out

        results: list[list[tuple[Any, ...]]] = await self._outbox._in_transaction(work)
        return results


def meta_store_for(outbox: Outbox) -> MetaStore:
    """The store sharing ``outbox``'s connections (SQLite or PostgreSQL)."""
    from capirelay.outbox.sqlite import SQLiteOutbox

    if isinstance(outbox, SQLiteOutbox):
        return _SQLiteMetaStore(outbox)
    from capirelay.outbox.postgres import PostgresOutbox

    if isinstance(outbox, PostgresOutbox):
        return _PostgresMetaStore(outbox)
    raise TypeError(f"no diagnostics store for {type(outbox).__name__}")
