"""What both outbox backends do the same way with their rows: decode them, read a DLQ filter,
assemble queue stats.

SQLite and PostgreSQL differ in how they store and query (JSON text vs ``jsonb``,
a WHERE clause built per filter vs one statement with NULL-tolerant parameters),
but a queue row, a dead-letter row and the stats they add up to mean the same on
both.  Keeping that meaning in one place means a column added to
:class:`~capirelay.outbox.base.LeasedEvent` or :class:`~capirelay.outbox.base.DLQFilter`
is decoded or filtered identically by every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from capirelay.graph.errors import meta_says
from capirelay.orders import UNVERIFIED_ID_PREFIX, public_event_id
from capirelay.outbox.base import DeadLetter, DLQFilter, DLQGroup, LeasedEvent, QueueStats

__all__ = [
    "DLQ_FILTER_FIELDS",
    "dead_letter_from_row",
    "dlq_filter_values",
    "dlq_group",
    "leased_from_row",
    "queue_stats",
    "require_purge_target",
]

# Each DLQFilter field: (field and parameter name, column it restricts, SQL comparison).
DLQ_FILTER_FIELDS: Final = (
    ("pixel_id", "pixel_id", "="),
    ("event_name", "event_name", "="),
    ("reason", "reason", "="),
    ("since", "dead_at", ">="),
    ("until", "dead_at", "<"),
)


def dlq_group(
    pixel_id: str,
    event_name: str,
    reason: str,
    code: int | None,
    subcode: int | None,
    count: int,
    last_dead_at: float,
    message: str | None,
    user_title: str | None,
    user_msg: str | None,
    fbtrace_id: str | None,
) -> DLQGroup:
    """A ``dlq_breakdown`` row (both backends' column order) as a group, its latest
    letter's Meta message told with the user title and message (:func:`meta_says`)."""
    said = meta_says(message, user_title, user_msg) or None
    return DLQGroup(
        pixel_id, event_name, reason, code, subcode, count, last_dead_at, said, fbtrace_id
    )


def leased_from_row(row: Sequence[Any], lease_id: str = "") -> LeasedEvent:
    """A queue row in the column order ``id, pixel_id, event_name, event_id, payload,
    event_time, deadline, attempts, test_event_code, queued_at``; ``lease_id`` is the
    lease that handed it out (none for a row only looked at)."""
    (id_, pixel_id, event_name, event_id, payload, event_time, deadline, attempts,
     test_event_code, queued_at) = row  # fmt: skip
    return LeasedEvent(
        id=id_,
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=event_id,
        payload=bytes(payload),
        event_time=event_time,
        deadline=deadline,
        attempts=attempts,
        test_event_code=test_event_code,
        queued_at=queued_at,
        lease_id=lease_id,
    )


def dead_letter_from_row(
    row: Sequence[Any], decode_json: Callable[[Any], Any] | None = None
) -> DeadLetter:
    """A dead-letter row in the column order ``id, pixel_id, event_name, event_id, payload,
    event_time, deadline, reason, error, attempt_log, test_event_code, queued_at, dead_at``.

    ``decode_json`` turns the stored ``error`` and ``attempt_log`` into Python values for
    a backend that keeps them as JSON text; a backend whose driver already decodes them
    passes none.
    """
    (id_, pixel_id, event_name, event_id, payload, event_time, deadline, reason, error,
     attempt_log, test_event_code, queued_at, dead_at) = row  # fmt: skip
    if decode_json is not None:
        error = decode_json(error) if error else None
        attempt_log = decode_json(attempt_log)
    return DeadLetter(
        id=id_,
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=public_event_id(event_id),
        payload=bytes(payload),
        unverified=event_id.startswith(UNVERIFIED_ID_PREFIX),
        event_time=event_time,
        deadline=deadline,
        reason=reason,
        error=error,
        attempts=list(attempt_log),
        test_event_code=test_event_code,
        queued_at=queued_at,
        dead_at=dead_at,
    )


def dlq_filter_values(flt: DLQFilter | None) -> dict[str, Any]:
    """The filter's fields by name; ``None`` (no filter) leaves every field unset."""
    flt = flt or DLQFilter()
    return {name: getattr(flt, name) for name, _, _ in DLQ_FILTER_FIELDS}


def require_purge_target(ids: Sequence[int] | None, flt: DLQFilter | None) -> None:
    """Refuse a purge that names neither ids nor a filter: "everything" must be explicit."""
    if ids is None and flt is None:
        raise ValueError("dlq_purge needs ids or a filter (DLQFilter() matches everything)")


def queue_stats(
    pixel_rows: Iterable[tuple[str, int, int, float | None]],
    oldest_queued_at: float | None,
    dlq_by_reason: Iterable[tuple[str, int]],
) -> QueueStats:
    """Add up per-pixel ``(pixel_id, depth, leased, earliest deadline)`` rows and the DLQ's
    ``(reason, count)`` rows into :class:`QueueStats`."""
    stats = QueueStats()
    deadlines: list[float] = []
    for pixel_id, depth, leased, earliest_deadline in pixel_rows:
        stats.depth_by_pixel[pixel_id] = depth
        stats.leased += leased
        if earliest_deadline is not None:
            deadlines.append(earliest_deadline)
    stats.depth = sum(stats.depth_by_pixel.values())
    stats.earliest_deadline = min(deadlines) if deadlines else None
    stats.oldest_queued_at = oldest_queued_at
    stats.dlq_by_reason = dict(dlq_by_reason)
    stats.dlq_size = sum(stats.dlq_by_reason.values())
    return stats
