"""Delivered events' receipts on PostgreSQL: one row per acked batch (migration 0009).

An ack of N delivered events writes ONE ``capirelay_receipt_batches`` row: Meta's
answer (``fbtrace_id``, ``events_received``, when it was sent) once, and each event's
own fields as parallel arrays.  That replaces N receipt rows and their 3N index
entries; a GIN index on ``event_ids`` (entries inserted directly since migration 0011)
lets ``capirelay trace`` find the batch of an event.  The rows come back out as ordinary
:class:`Receipt` values (:func:`receipts_of_batch`), so traces, pruning, counting and
erasure see the same receipts as before.  Receipts of the other outcomes stay one row
each in ``capirelay_receipts``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from psycopg import AsyncConnection

from capirelay.outbox.postgres._statements import QUERIES
from capirelay.outbox.receipts import Outcome, Receipt, decode_list, json_or_none

__all__ = [
    "batch_params",
    "erase_from_batches",
    "receipts_of_batch",
    "write_delivered",
]


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def batch_params(receipts: Sequence[Receipt]) -> dict[str, Any]:
    """The batch row of delivered ``receipts`` (one ack: one answer from Meta)."""
    first = receipts[0]
    return {
        "recorded_at": float(first.recorded_at),
        "last_attempt_at": _float(first.last_attempt_at),
        "fbtrace_id": first.fbtrace_id,
        "events_received": first.events_received,
        "events": len(receipts),
        "pixel_ids": [r.pixel_id for r in receipts],
        "event_names": [r.event_name for r in receipts],
        "event_ids": [r.event_id for r in receipts],
        "sources": [r.source for r in receipts],
        "received_at": [_float(r.received_at) for r in receipts],
        "first_attempt_at": [_float(r.first_attempt_at) for r in receipts],
        "attempts": [int(r.attempts) for r in receipts],
        "test_event_codes": [r.test_event_code for r in receipts],
        "attempt_logs": [json_or_none(r.attempt_log) for r in receipts],
        "order_keys": [r.order_key for r in receipts],
        "identities": [r.identity for r in receipts],
    }


async def write_delivered(conn: AsyncConnection[Any], receipts: Sequence[Receipt]) -> None:
    if receipts:
        await conn.execute(QUERIES["insert_receipt_batch"], batch_params(receipts))


def receipts_of_batch(row: Sequence[Any]) -> list[Receipt]:
    """The receipts a batch row holds, in its order (columns as the batch reads of
    queries.sql return them)."""
    (
        _id,
        recorded_at,
        last_attempt_at,
        fbtrace_id,
        events_received,
        pixel_ids,
        event_names,
        event_ids,
        sources,
        received_at,
        first_attempt_at,
        attempts,
        test_event_codes,
        attempt_logs,
        order_keys,
        identities,
    ) = row
    return [
        Receipt(
            pixel_id=pixel_ids[i],
            event_name=event_names[i],
            event_id=event_ids[i],
            outcome=Outcome.DELIVERED,
            source=sources[i],
            recorded_at=recorded_at,
            received_at=received_at[i],
            first_attempt_at=first_attempt_at[i],
            last_attempt_at=last_attempt_at,
            attempts=attempts[i],
            fbtrace_id=fbtrace_id,
            events_received=events_received,
            test_event_code=test_event_codes[i],
            attempt_log=decode_list(attempt_logs[i]),
            order_key=order_keys[i],
            identity=identities[i],
        )
        for i in range(len(event_ids))
    ]


async def erase_from_batches(
    conn: AsyncConnection[Any],
    keys: Sequence[str],
    pixel_id: str | None,
    write_receipts: Callable[[AsyncConnection[Any], Sequence[Receipt]], Awaitable[None]],
) -> int:
    """Erase the delivered receipts carrying one of ``keys`` (``em:<short hash>``...):
    each batch holding one is deleted and its other receipts are written back one row
    each (``write_receipts``).  How many receipts were erased."""
    erased = 0
    done: set[int] = set()
    for key in keys:
        cur = await conn.execute(QUERIES["batches_of_identity"], {"key": key})
        for row in await cur.fetchall():
            if row[0] in done:
                continue
            receipts = receipts_of_batch(row)
            keep = [r for r in receipts if not _carries(r, keys, pixel_id)]
            if len(keep) == len(receipts):
                continue
            done.add(row[0])
            await conn.execute(QUERIES["delete_receipt_batch"], {"id": row[0]})
            await write_receipts(conn, keep)
            erased += len(receipts) - len(keep)
    return erased


def _carries(receipt: Receipt, keys: Sequence[str], pixel_id: str | None) -> bool:
    if pixel_id is not None and receipt.pixel_id != pixel_id:
        return False
    words = (receipt.identity or "").split(" ")
    return any(key in words for key in keys)
