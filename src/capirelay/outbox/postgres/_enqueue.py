"""Enqueue on PostgreSQL: the order-ledger claim, then dedup and queue in one statement.

The database does as little per event as it can: the caller (this module) keeps the
first occurrence of a key repeated inside a request and ranks the keys in key order, so
the ``enqueue`` statement (``queries.sql``) neither deduplicates nor sorts text; it
claims each key, in rank order, with the queue row id it assigns up front.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from psycopg import AsyncConnection

from capirelay.outbox.base import DEDUP_WINDOW_SECONDS, NewEvent

__all__ = ["enqueue_keys", "enqueue_orders", "enqueue_params"]


def enqueue_params(events: Sequence[NewEvent], now: float, channel: str) -> dict[str, Any]:
    """The ``enqueue`` statement's arrays for ``events`` (each key once, in request order)."""
    order = sorted(range(len(events)), key=lambda i: _key(events[i]))
    ranks = [0] * len(events)
    for rank, index in enumerate(order):
        ranks[index] = rank
    return {
        "ranks": ranks,
        "pixel_ids": [e.pixel_id for e in events],
        "event_names": [e.event_name for e in events],
        "event_ids": [e.event_id for e in events],
        "payloads": [e.payload for e in events],
        # Binary typed arrays (%b in the statement): ints and floats, never mixed.
        "event_times": [int(e.event_time) for e in events],
        "deadlines": [float(e.deadline) for e in events],
        "test_event_codes": [e.test_event_code for e in events],
        "sources": [e.source for e in events],
        "now": now,
        "cutoff": now - DEDUP_WINDOW_SECONDS,
        "channel": channel,
    }


def _key(event: NewEvent) -> tuple[str, str, str]:
    return (event.event_id, event.event_name, event.pixel_id)


async def enqueue_keys(
    conn: AsyncConnection[Any],
    queries: Mapping[str, str],
    indexes: Iterable[int],
    events: Sequence[NewEvent],
    now: float,
    channel: str,
) -> set[int]:
    """Queue ``events[i]`` for each ``i`` of ``indexes`` whose key is new (dedup as usual);
    the indexes of the queued ones.  A key repeated in the request keeps its first
    occurrence here, so the statement sees each key once (no sort in the database)."""
    picked: list[int] = []
    seen: set[tuple[str, str, str]] = set()
    for index in indexes:
        key = _key(events[index])
        if key not in seen:
            seen.add(key)
            picked.append(index)
    if not picked:
        return set()
    params = enqueue_params([events[i] for i in picked], now, channel)
    cur = await conn.execute(queries["enqueue"], params)
    return {picked[row[0] - 1] for row in await cur.fetchall()}


async def enqueue_orders(
    conn: AsyncConnection[Any],
    queries: Mapping[str, str],
    events: Sequence[NewEvent],
    now: float,
    channel: str,
) -> set[int]:
    """Enqueue a request holding order events: claim their ledger keys, then queue (dedup
    as usual) the events without a key or with a new one.  The indexes of queued events."""
    keys = sorted({e.order_key for e in events if e.order_key is not None})
    cur = await conn.execute(queries["claim_order_keys"], {"keys": keys, "now": now})
    claimed = {bytes(row[0]) for row in await cur.fetchall()}
    picked: list[int] = []
    for index, event in enumerate(events):
        if event.order_key is None:
            picked.append(index)
        elif event.order_key in claimed:
            picked.append(index)
            claimed.discard(event.order_key)  # a key repeated in the request: first place only
    return await enqueue_keys(conn, queries, picked, events, now, channel)
