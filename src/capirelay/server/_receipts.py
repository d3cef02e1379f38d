"""Receipts the ingest routes write themselves: duplicates and policy drops.

Delivered and dead-lettered events get theirs from the outbox in the commit that
settles them; these two outcomes never reach the queue, so the route records them
through the same outbox (on SQLite the same group commit as the request's enqueue).
A receipt that cannot be stored never fails a request whose events were committed:
it is logged and counted as lost.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from capirelay.orders import public_event_id
from capirelay.outbox.base import EnqueueStatus, NewEvent, Outbox, StorageUnavailable
from capirelay.outbox.receipts import Receipt, dropped_receipt, duplicate_receipt

__all__ = ["record_dropped", "record_duplicates", "record_receipts"]

log = logging.getLogger("capirelay.server")


async def record_receipts(outbox: Outbox, receipts: Sequence[Receipt]) -> None:
    """Store ``receipts`` in one write; storage being down costs a log line, not the answer."""
    if not receipts:
        return
    try:
        await outbox.record_receipts(receipts)
    except StorageUnavailable as exc:
        log.warning("%d receipts not stored: %s", len(receipts), exc)


async def record_duplicates(
    outbox: Outbox, events: Sequence[NewEvent], statuses: Sequence[EnqueueStatus], *, now: float
) -> None:
    """A receipt (or a bumped count) for each event the outbox answered ``duplicate``."""
    receipts = [
        duplicate_receipt(
            pixel_id=event.pixel_id,
            event_name=event.event_name,
            event_id=public_event_id(event.event_id),
            source=event.source,
            payload=event.payload,
            test_event_code=event.test_event_code,
            now=now,
        )
        for event, status in zip(events, statuses, strict=True)
        if status == EnqueueStatus.DUPLICATE
    ]
    await record_receipts(outbox, receipts)


async def record_dropped(
    outbox: Outbox, *, pixel_id: str, event_name: str, event_id: str, reason: str, now: float
) -> None:
    """The receipt of a beacon the consent or bot policy kept from Meta (no identifiers)."""
    receipt = dropped_receipt(
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=event_id,
        source="collect",
        reason=reason,
        now=now,
    )
    await record_receipts(outbox, [receipt])
