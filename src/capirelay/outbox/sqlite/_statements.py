"""The SQLite backend's SQL, loaded once (named statements, numbered migrations), and the
multi-row statements enqueue builds from them."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from typing import Final

from capirelay.outbox._sql import Migration, load_migrations, load_queries
from capirelay.outbox.base import ATTEMPT_LOG_LIMIT, DEDUP_WINDOW_SECONDS, NewEvent

# queue.lease_id of a row no lease holds; lease ids lie above it (migration 0002 says why).
NO_LEASE: Final = 1 << 62

MIGRATIONS: Final[tuple[Migration, ...]] = load_migrations("capirelay.outbox.sqlite")
QUERIES: Final = load_queries(
    "capirelay.outbox.sqlite",
    {
        "attempt_log_limit": ATTEMPT_LOG_LIMIT,
        "no_lease": NO_LEASE,
        "dedup_window_seconds": DEDUP_WINDOW_SECONDS,
    },
)

# Most rows per multi-row VALUES statement (10 parameters a row stays far below SQLite's
# 32,766-parameter limit).
MAX_PIECE: Final = 256


@functools.cache
def _many_rows_sql(name: str, row: str, rows: int) -> str:
    """Statement ``name`` with a VALUES list of ``rows`` times ``row``.

    Enqueue claims a call's dedup keys and inserts its rows with multi-row VALUES
    statements: one statement step per piece instead of one per event.  Piece sizes are
    powers of two (at most MAX_PIECE rows), so a handful of statement texts cover every
    call size and stay in the connection's prepared-statement cache."""
    return QUERIES[name].replace("{values}", ", ".join([row] * rows))


def _pieces(count: int) -> list[int]:
    """``count`` split into power-of-two sizes, largest first (100 -> 64, 32, 4)."""
    sizes: list[int] = []
    while count:
        size = min(MAX_PIECE, 1 << (count.bit_length() - 1))
        sizes.append(size)
        count -= size
    return sizes


def claim_keys(
    conn: sqlite3.Connection, keys: Sequence[tuple[str, str, str]], now: float
) -> list[bool]:
    """Claim each dedup key (``claim_dedup_keys`` in ``queries.sql``); per key, in order,
    whether it was claimed.  A key repeated in ``keys`` counts as claimed at its first
    place only."""
    return claim_keys_at(conn, [(*key, now) for key in keys])


def claim_keys_at(
    conn: sqlite3.Connection, rows: Sequence[tuple[str, str, str, float]]
) -> list[bool]:
    """:func:`claim_keys` for keys each with its own clock reading (pixel_id, event_name,
    event_id, now): the keys of several requests of one commit group, claimed in order
    as if each request had claimed its own in turn.  The window is measured from each
    row's reading, so a key's later row can claim it when an earlier one could not; the
    claim's RETURNING names the row by its reading, and a key repeated with the same
    reading counts as claimed at its first place only."""
    claimed: set[tuple[str, str, str, float]] = set()
    start = 0
    for size in _pieces(len(rows)):
        params = [v for row in rows[start : start + size] for v in row]
        claimed.update(
            map(
                tuple,
                conn.execute(
                    _many_rows_sql("claim_dedup_keys", "(?, ?, ?, ?, 1)", size), params
                ).fetchall(),
            )
        )
        start += size
    outcome: list[bool] = []
    for row in rows:
        outcome.append(row in claimed)
        claimed.discard(row)
    return outcome


def claim_orders(conn: sqlite3.Connection, events: Sequence[NewEvent], now: float) -> list[bool]:
    """Write the order-ledger entries of a call's order events; per event, in order, whether
    it may be queued (no order key, or its key was new; a key repeated in the call counts
    at its first place only)."""
    keys = list(dict.fromkeys(e.order_key for e in events if e.order_key is not None))
    claimed: set[bytes] = set()
    start = 0
    for size in _pieces(len(keys)):
        params = [v for key in keys[start : start + size] for v in (key, now)]
        claimed.update(
            bytes(row[0])
            for row in conn.execute(_many_rows_sql("claim_order_keys", "(?, ?)", size), params)
        )
        start += size
    outcome: list[bool] = []
    for event in events:
        if event.order_key is None:
            outcome.append(True)
        else:
            outcome.append(event.order_key in claimed)
            claimed.discard(event.order_key)
    return outcome


def insert_queued(conn: sqlite3.Connection, events: Sequence[NewEvent], now: float) -> None:
    insert_queued_at(conn, [(event, now) for event in events])


def insert_queued_at(conn: sqlite3.Connection, rows: Sequence[tuple[NewEvent, float]]) -> None:
    """Insert queued rows, each with its own clock reading (queued_at, available_at)."""
    start = 0
    for size in _pieces(len(rows)):
        params = [
            v
            for e, now in rows[start : start + size]
            for v in (e.pixel_id, e.event_name, e.event_id, e.payload, e.event_time,
                      e.deadline, e.test_event_code, e.source, now, now)
        ]  # fmt: skip
        conn.execute(
            _many_rows_sql("insert_queued", "(?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)", size), params
        )
        start += size
