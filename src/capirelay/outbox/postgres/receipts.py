"""Receipts, traces and erasure on the PostgreSQL outbox (migration 0007).

Mixed into :class:`~capirelay.outbox.postgres.PostgresOutbox`.  The ack of a delivered
batch deletes its rows (RETURNING what the receipts need) and inserts their receipts in
one transaction; a dead-letter move locks its rows, writes their receipts and moves
them in one transaction too (:func:`insert_dead_letter_receipts`).  Receipts go in with
one set-based statement per call (parallel arrays through ``unnest``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final, TypeVar

from psycopg import AsyncConnection

from capirelay.orders import UNVERIFIED_ID_PREFIX
from capirelay.outbox.postgres._batches import (
    erase_from_batches,
    receipts_of_batch,
    write_delivered,
)
from capirelay.outbox.postgres._leases import settle
from capirelay.outbox.postgres._statements import QUERIES
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

T = TypeVar("T")

PRUNE_CHUNK: Final = 10_000

# The columns of a receipt, in order: the parallel arrays of `write_receipts` in queries.sql.
_RECEIPT_COLUMNS: Final = (
    "pixel_id",
    "event_name",
    "event_id",
    "outcome",
    "source",
    "recorded_at",
    "received_at",
    "first_attempt_at",
    "last_attempt_at",
    "attempts",
    "fbtrace_id",
    "events_received",
    "test_event_code",
    "reason",
    "problems",
    "attempt_log",
    "order_key",
    "identity",
    "count",
)
# Erasure's candidate statements by the table they read.
_CANDIDATES: Final = {
    "queue": "erasure_queued_candidates",
    "dead_letters": "erasure_letter_candidates",
}


def _receipt_arrays(receipts: Sequence[Receipt]) -> dict[str, list[Any]]:
    rows = [
        (
            r.pixel_id,
            r.event_name,
            r.event_id,
            str(r.outcome),
            r.source,
            float(r.recorded_at),
            _float(r.received_at),
            _float(r.first_attempt_at),
            _float(r.last_attempt_at),
            int(r.attempts),
            r.fbtrace_id,
            None if r.events_received is None else int(r.events_received),
            r.test_event_code,
            r.reason,
            json_or_none(r.problems),
            json_or_none(r.attempt_log),
            r.order_key,
            r.identity,
            int(r.count),
        )
        for r in receipts
    ]
    return {name: [row[i] for row in rows] for i, name in enumerate(_RECEIPT_COLUMNS)}


def _float(value: float | None) -> float | None:
    # A binary float8[] takes floats only (an int among them would not dump).
    return None if value is None else float(value)


def _collapse_duplicates(receipts: Sequence[Receipt]) -> list[Receipt]:
    """One receipt per duplicated key of a call (its count summed), other receipts as they are."""
    out: list[Receipt] = []
    seen: dict[tuple[str, str, str], int] = {}
    for r in receipts:
        if r.outcome != Outcome.DUPLICATE:
            out.append(r)
            continue
        key = (r.pixel_id, r.event_name, r.event_id)
        if key in seen:
            first = out[seen[key]]
            out[seen[key]] = replace(
                first, count=first.count + r.count, last_attempt_at=r.recorded_at
            )
        else:
            seen[key] = len(out)
            out.append(replace(r, last_attempt_at=r.recorded_at))
    return out


async def write_receipts(conn: AsyncConnection[Any], receipts: Sequence[Receipt]) -> None:
    if receipts:
        arrays = _receipt_arrays(_collapse_duplicates(receipts))
        await conn.execute(QUERIES["write_receipts"], arrays)


async def insert_dead_letter_receipts(
    conn: AsyncConnection[Any],
    ids: list[int],
    lease_id: str,
    reason: str,
    attempt: dict[str, Any] | None,
    now: float,
) -> None:
    """Lock the rows a dead-letter move is about to take and write their receipts."""
    cur = await conn.execute(QUERIES["lock_settling"], {"ids": ids, "lease_id": lease_id})
    receipts = [dead_letter_from_row(row, reason, attempt, now) for row in await cur.fetchall()]
    await write_receipts(conn, receipts)


class PostgresReceipts:
    """Receipt methods of the PostgreSQL outbox (see the module docstring)."""

    _in_transaction: Callable[[Callable[[AsyncConnection[Any]], Awaitable[Any]]], Awaitable[Any]]

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
        id_list = [int(i) for i in ids]
        params = {"ids": id_list, "lease_id": lease_id}

        async def work(conn: AsyncConnection[Any]) -> None:
            # Binary results: the payloads come back as bytes, not hex text to encode.
            rows = await settle(conn, lease_id, id_list, "ack_returning", params, binary=True)
            receipts = [delivered_from_row(row, answer, now) for row in rows]
            await write_delivered(conn, receipts)  # one batch row, not one row per event

        await self._in_transaction(work)

    async def record_receipts(self, receipts: Sequence[Receipt]) -> None:
        if receipts:
            batch = tuple(receipts)

            async def work(conn: AsyncConnection[Any]) -> None:
                await write_receipts(conn, batch)

            await self._in_transaction(work)

    async def trace(self, event_id: str, *, pixel_id: str | None = None) -> TraceRecord:
        if "\x00" in event_id:
            # No stored event holds U+0000 (text cannot; ingest refuses control characters),
            # and PostgreSQL would refuse the query itself: nothing is known of it, as on
            # SQLite, rather than a DataError (a 500 for GET /v1/events/a%00b).
            return TraceRecord(event_id)
        # As sent, or as an unverified beacon's (capirelay.orders.UNVERIFIED_ID_PREFIX).
        params = {"event_id": event_id, "unverified_id": UNVERIFIED_ID_PREFIX + event_id}

        async def work(conn: AsyncConnection[Any]) -> TraceRecord:
            rows = [
                await (await conn.execute(QUERIES[name], params)).fetchall()
                for name in ("receipts_of_event", "queued_of_event", "letters_of_event")
            ]
            batch_rows = await (await conn.execute(QUERIES["batches_of_event"], params)).fetchall()
            record = trace_from_rows(event_id, pixel_id, *rows)
            delivered = [
                r
                for row in batch_rows
                for r in receipts_of_batch(row)
                if r.event_id == event_id and pixel_id in (None, r.pixel_id)
            ]
            receipts = sorted([*record.receipts, *delivered], key=lambda r: r.recorded_at)
            return TraceRecord(event_id, receipts, record.pending)

        result: TraceRecord = await self._in_transaction(work)
        return result

    async def event_ids_for_order(
        self, order_id: str, *, pixel_id: str | None = None, limit: int = 20
    ) -> list[str]:
        key = order_key(order_id)
        if key is None:
            return []
        params = {"key": key, "pixel_id": pixel_id, "limit": limit}

        async def work(conn: AsyncConnection[Any]) -> list[str]:
            # Newest first: per-event receipts by id, then the delivered batches.
            cur = await conn.execute(QUERIES["event_ids_of_order"], params)
            found = [(at, event_id) for event_id, at in await cur.fetchall()]
            cur = await conn.execute(QUERIES["batches_of_order"], params)
            for row in await cur.fetchall():
                found += [
                    (r.recorded_at, r.event_id)
                    for r in receipts_of_batch(row)
                    if r.order_key == key and pixel_id in (None, r.pixel_id)
                ]
            ids: list[str] = []
            for _, event_id in sorted(found, key=lambda f: f[0], reverse=True):
                if event_id not in ids:
                    ids.append(event_id)
            return ids[:limit]

        found: list[str] = await self._in_transaction(work)
        return found

    async def prune_receipts(
        self, *, now: float, retention_seconds: float, cap: int, chunk: int = PRUNE_CHUNK
    ) -> int:
        """Past the retention, then over the cap, oldest first; over the cap, the per-event
        receipts keep their place and the delivered batches make room (the cap counts
        receipts, a batch holds many)."""
        cutoff = now - retention_seconds
        removed = await self._prune_chunks(
            QUERIES["prune_old_receipts"], {"cutoff": cutoff, "chunk": chunk}, chunk
        )
        removed += await self._prune_chunks(
            QUERIES["prune_old_receipt_batches"],
            {"cutoff": cutoff, "chunk": chunk},
            chunk,
            counted=True,
        )
        removed += await self._prune_chunks(
            QUERIES["prune_receipts_over_cap"], {"cap": cap, "chunk": chunk}, chunk
        )
        room = max(0, cap - await self._count(QUERIES["receipt_count"]))
        removed += await self._prune_chunks(
            QUERIES["prune_receipt_batches_over_cap"],
            {"room": room, "chunk": chunk},
            chunk,
            counted=True,
        )
        return removed

    async def _prune_chunks(
        self, sql: str, params: dict[str, Any], chunk: int, *, counted: bool = False
    ) -> int:
        """Run a chunked DELETE until a chunk comes back short; the receipts it removed
        (``counted``: the statement returns each removed row's receipt count)."""
        removed = 0
        while True:

            async def work(conn: AsyncConnection[Any]) -> tuple[int, int]:
                cur = await conn.execute(sql, params)
                if not counted:
                    return cur.rowcount, cur.rowcount
                rows = await cur.fetchall()
                return len(rows), sum(int(r[0]) for r in rows)

            rows, receipts = await self._in_transaction(work)
            removed += receipts
            if rows < chunk:
                return removed

    async def _count(self, sql: str) -> int:
        async def work(conn: AsyncConnection[Any]) -> int:
            row = await (await conn.execute(sql)).fetchone()
            return int(row[0]) if row else 0

        count: int = await self._in_transaction(work)
        return count

    async def receipt_count(self) -> int:
        per_event = await self._count(QUERIES["receipt_count"])
        return per_event + await self._count(QUERIES["batched_receipt_count"])

    async def erase(
        self,
        hashes: Mapping[str, set[str]],
        *,
        pixel_id: str | None,
        now: float,
        audit: Sequence[tuple[str, str]],
    ) -> ErasureResult:
        needles = sorted({h for values in hashes.values() for h in values})
        short = sorted({f"{name}:{short_key(h)}" for name, vs in hashes.items() for h in vs})

        async def matching(conn: AsyncConnection[Any], table: str) -> list[int]:
            found: set[int] = set()
            for needle in needles:
                cur = await conn.execute(QUERIES[_CANDIDATES[table]], {"needle": needle.encode()})
                for id_, pixel, payload in await cur.fetchall():
                    if (pixel_id is None or pixel == pixel_id) and carries(bytes(payload), hashes):
                        found.add(id_)
            return sorted(found)

        async def work(conn: AsyncConnection[Any]) -> ErasureResult:
            queued = await matching(conn, "queue")
            letters = await matching(conn, "dead_letters")
            receipt_ids: set[int] = set()
            for key in short:
                cur = await conn.execute(QUERIES["erasure_receipt_candidates"], {"key": key})
                for id_, pixel, identity in await cur.fetchall():
                    if (pixel_id is None or pixel == pixel_id) and key in identity.split(" "):
                        receipt_ids.add(id_)
            cur = await conn.execute(QUERIES["erase_queued"], {"ids": queued})
            row = await cur.fetchone()
            removed_letters = await conn.execute(QUERIES["erase_letters"], {"ids": letters})
            removed_receipts = await conn.execute(
                QUERIES["erase_receipts"], {"ids": sorted(receipt_ids)}
            )
            batched = await erase_from_batches(conn, short, pixel_id, write_receipts)
            result = ErasureResult(
                queued=int(row[0]) if row else 0,
                dead_letters=removed_letters.rowcount,
                receipts=removed_receipts.rowcount + batched,
            )
            async with conn.cursor() as insert:
                await insert.executemany(
                    QUERIES["record_erasure"],
                    [
                        {
                            "now": now,
                            "field": name,
                            "digest": digest,
                            "pixel_id": pixel_id,
                            "queued": result.queued,
                            "dead_letters": result.dead_letters,
                            "receipts": result.receipts,
                        }
                        for name, digest in audit
                    ],
                )
            return result

        erased: ErasureResult = await self._in_transaction(work)
        return erased

    async def erasure_log(self, *, limit: int = 100) -> list[dict[str, Any]]:
        async def work(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(QUERIES["erasure_log"], {"limit": limit})
            return await cur.fetchall()

        rows = await self._in_transaction(work)
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
