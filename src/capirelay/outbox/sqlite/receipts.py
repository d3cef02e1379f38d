"""Receipts, traces and erasure on the SQLite outbox (migration 0006); statements in
``queries.sql``.

Mixed into :class:`~capirelay.outbox.sqlite.SQLiteOutbox`: every write goes through
its group-committing writer thread, so a receipt shares the commit (and the fsync)
of the state change it records: the ack of a delivered batch inserts its receipts in
the very transaction that deletes the rows; a dead-letter move does the same
(:func:`insert_dead_letter_receipts`, called from ``dead_letter``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

import orjson

from capirelay.orders import UNVERIFIED_ID_PREFIX
from capirelay.outbox.receipts import (
    ErasureResult,
    MetaAnswer,
    Outcome,
    Receipt,
    TraceRecord,
    carries,
    dead_letter_from_row,
    delivered_from_row,
    json_or_none,
    order_key,
    short_key,
    trace_from_rows,
)
from capirelay.outbox.sqlite._statements import QUERIES

T = TypeVar("T")

PRUNE_CHUNK: Final = 10_000


def receipt_params(r: Receipt) -> tuple[Any, ...]:
    return (
        r.pixel_id,
        r.event_name,
        r.event_id,
        str(r.outcome),
        r.source,
        r.recorded_at,
        r.received_at,
        r.first_attempt_at,
        r.last_attempt_at,
        r.attempts,
        r.fbtrace_id,
        r.events_received,
        r.test_event_code,
        r.reason,
        json_or_none(r.problems),
        json_or_none(r.attempt_log),
        r.order_key,
        r.identity,
        r.count,
    )


def _held(conn: sqlite3.Connection, id_list: bytes, lease_id: str) -> str:
    number = int(lease_id) if lease_id.isdigit() else -1
    held: str = conn.execute(QUERIES["held_ids"], (id_list, number)).fetchone()[0]
    return held


def write_receipts(conn: sqlite3.Connection, receipts: Sequence[Receipt]) -> None:
    """Insert receipts; a duplicate whose key already has a duplicate receipt bumps it."""
    fresh: list[Receipt] = []
    for r in receipts:
        if r.outcome == Outcome.DUPLICATE:
            params = (r.recorded_at, r.event_id, r.pixel_id, r.event_name)
            if conn.execute(QUERIES["bump_duplicate_receipt"], params).rowcount:
                continue
        fresh.append(r)
    if fresh:
        conn.executemany(QUERIES["insert_receipt"], [receipt_params(r) for r in fresh])


def insert_dead_letter_receipts(
    conn: sqlite3.Connection,
    id_list: bytes | str,
    reason: str,
    attempt_json: str | None,
    now: float,
) -> None:
    """Receipts for the queue rows about to move to the dead-letter store (same transaction)."""
    attempt = orjson.loads(attempt_json) if attempt_json else None
    receipts = [
        dead_letter_from_row(row, reason, attempt, now)
        for row in conn.execute(QUERIES["settling_rows"], (id_list,)).fetchall()
    ]
    write_receipts(conn, receipts)


def _ids_json(ids: Sequence[int]) -> bytes:
    return orjson.dumps([int(i) for i in ids])


class SQLiteReceipts:
    """Receipt methods of the SQLite outbox (see the module docstring)."""

    _write: Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]
    _read: Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]

    async def ack_delivered(
        self,
        ids: Sequence[int],
        *,
        now: float,
        lease_id: str,
        answer: MetaAnswer | None = None,
    ) -> None:
        if not ids:
            return
        requested = _ids_json(ids)

        def run(conn: sqlite3.Connection) -> None:
            id_list = _held(conn, requested, lease_id)
            receipts = [
                delivered_from_row(row, answer, now)
                for row in conn.execute(QUERIES["settling_rows"], (id_list,)).fetchall()
            ]
            write_receipts(conn, receipts)
            conn.execute(QUERIES["unpin_dedup_of_queued"], (id_list,))
            conn.execute(QUERIES["ack"], (id_list,))

        await self._write(run)

    async def record_receipts(self, receipts: Sequence[Receipt]) -> None:
        if receipts:
            batch = tuple(receipts)
            await self._write(lambda c: write_receipts(c, batch))

    async def trace(self, event_id: str, *, pixel_id: str | None = None) -> TraceRecord:
        both = (event_id, UNVERIFIED_ID_PREFIX + event_id)  # as sent, or an unverified beacon's

        def run(conn: sqlite3.Connection) -> TraceRecord:
            return trace_from_rows(
                event_id,
                pixel_id,
                conn.execute(QUERIES["receipts_of"], (event_id,)),
                conn.execute(QUERIES["queued_of"], both),
                conn.execute(QUERIES["letters_of"], both),
            )

        result: TraceRecord = await self._read(run)
        return result

    async def event_ids_for_order(
        self, order_id: str, *, pixel_id: str | None = None, limit: int = 20
    ) -> list[str]:
        key = order_key(order_id)
        if key is None:
            return []
        params = (key, pixel_id, pixel_id, limit)
        rows = await self._read(
            lambda c: c.execute(QUERIES["event_ids_of_order"], params).fetchall()
        )
        return [row[0] for row in rows]

    async def prune_receipts(
        self, *, now: float, retention_seconds: float, cap: int, chunk: int = PRUNE_CHUNK
    ) -> int:
        """Delete receipts older than the retention, then the oldest beyond ``cap``;
        a chunk per transaction so pruning never holds the writer for long."""
        removed = 0
        cutoff = now - retention_seconds
        steps: tuple[tuple[str, float], ...] = (
            (QUERIES["prune_old_receipts"], cutoff),
            (QUERIES["prune_receipts_over_cap"], cap),
        )
        for sql, first in steps:
            params = (first, chunk)
            while True:

                def run(conn: sqlite3.Connection, sql: str = sql, params: Any = params) -> int:
                    return int(conn.execute(sql, params).rowcount)

                count: int = await self._write(run)
                removed += count
                if count < chunk:
                    break
        return removed

    async def receipt_count(self) -> int:
        count: int = await self._read(lambda c: c.execute(QUERIES["receipt_count"]).fetchone()[0])
        return count

    async def erase(
        self,
        hashes: Mapping[str, set[str]],
        *,
        pixel_id: str | None,
        now: float,
        audit: Sequence[tuple[str, str]],
    ) -> ErasureResult:
        """Remove every queued and dead-lettered event and every receipt carrying one of
        ``hashes`` (wire key -> full SHA-256 digests), of one pixel or all; record the
        request (``audit``: (field, value digest) pairs) in the same transaction."""
        needles = sorted({h for values in hashes.values() for h in values})
        short = sorted({f"{name}:{short_key(h)}" for name, vs in hashes.items() for h in vs})

        def candidates(conn: sqlite3.Connection, table: str) -> list[int]:
            found: set[int] = set()
            for needle in needles:
                sql = QUERIES[f"erase_candidates_{table}"]
                for id_, pixel, payload in conn.execute(sql, (needle.encode(),)):
                    if (pixel_id is None or pixel == pixel_id) and carries(bytes(payload), hashes):
                        found.add(id_)
            return sorted(found)

        def receipt_ids(conn: sqlite3.Connection) -> list[int]:
            found: set[int] = set()
            for key in short:
                sql = QUERIES["erase_candidates_receipts"]
                for id_, pixel, identity in conn.execute(sql, (key,)):
                    if (pixel_id is None or pixel == pixel_id) and key in identity.split(" "):
                        found.add(id_)
            return sorted(found)

        def scan(conn: sqlite3.Connection) -> tuple[list[int], list[int], list[int]]:
            return candidates(conn, "queue"), candidates(conn, "dead_letters"), receipt_ids(conn)

        queued, letters, receipts = await self._read(scan)

        def run(conn: sqlite3.Connection) -> ErasureResult:
            q, d, r = _ids_json(queued), _ids_json(letters), _ids_json(receipts)
            conn.execute(QUERIES["unpin_dedup_of_queued"], (q,))
            result = ErasureResult(
                queued=conn.execute(QUERIES["ack"], (q,)).rowcount,
                dead_letters=conn.execute(QUERIES["dlq_purge_ids"], (d,)).rowcount,
                receipts=conn.execute(QUERIES["delete_receipts_ids"], (r,)).rowcount,
            )
            conn.executemany(
                QUERIES["insert_erasure"],
                [
                    (
                        now,
                        name,
                        digest,
                        pixel_id,
                        result.queued,
                        result.dead_letters,
                        result.receipts,
                    )
                    for name, digest in audit
                ],
            )
            return result

        erased: ErasureResult = await self._write(run)
        return erased

    async def erasure_log(self, *, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self._read(lambda c: c.execute(QUERIES["erasure_log"], (limit,)).fetchall())
        keys = (
            "requested_at",
            "field",
            "value_sha256",
            "pixel_id",
            "queued",
            "dead_letters",
            "receipts",
        )
        return [dict(zip(keys, row, strict=True)) for row in rows]
