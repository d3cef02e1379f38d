"""Queue statistics on PostgreSQL: exact, or shared between replicas (migration 0015).

The figures come from a scan of the whole queue (depth and leased events per pixel, the
earliest deadline) and of the dead-letter table.  The gauges ask for them every few
seconds on every replica, and so does every ``/metrics`` scrape.  With ``max_age`` a
caller accepts figures that old: a replica reads the ones another replica stored, and
when they are too old the first replica to notice computes and stores them while the
others keep reading the stored ones (a transaction-level advisory lock, taken without
waiting).  "Too old" is ``max_age`` or ten times what the last scan took, whichever is
longer (but at most a minute), so the scans take at most a tenth of one database core
until a scan takes 6 s (a backlog of about 60 million events), and only one replica
scans at a time.  Stored figures stamped later than the asking replica's clock allows
(another replica's clock ahead, or this one's stepped back) count as too old: the
replicas then count for themselves, as before 0015, rather than serve frozen figures.
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson
from psycopg import AsyncConnection

from capirelay.outbox._rows import queue_stats
from capirelay.outbox.base import QueueStats
from capirelay.outbox.postgres._statements import QUERIES

__all__ = ["STATS_COST_FACTOR", "exact_stats", "shared_stats"]

#: The shared figures are recomputed no sooner than this many times the last scan's
#: duration: the scans' share of one database core stays under 1 / STATS_COST_FACTOR...
STATS_COST_FACTOR: Final = 10.0
#: ...but figures are never served older than this (seconds): a gauge a minute old is the
#: most an alert on it should have to allow for.
STATS_MAX_AGE: Final = 60.0

_Rows = tuple[list[tuple[Any, ...]], float | None, list[tuple[Any, ...]]]


async def _scan(conn: AsyncConnection[Any]) -> _Rows:
    async with conn.pipeline():
        by_pixel = await conn.execute(QUERIES["stats_by_pixel"])
        oldest = await conn.execute(QUERIES["oldest_queued_at"])
        by_reason = await conn.execute(QUERIES["dlq_by_reason"])
    oldest_row = await oldest.fetchone()
    return (
        await by_pixel.fetchall(),
        oldest_row[0] if oldest_row else None,
        await by_reason.fetchall(),
    )


async def exact_stats(conn: AsyncConnection[Any]) -> QueueStats:
    """The figures as of this transaction's snapshot."""
    return queue_stats(*await _scan(conn))


async def shared_stats(conn: AsyncConnection[Any], *, now: float, max_age: float) -> QueueStats:
    """Figures at most ``max_age`` seconds old (or ten scans' time, when that is longer),
    read from what another replica stored, or computed and stored here; see the module."""
    stored = await (await conn.execute(QUERIES["shared_stats"])).fetchone()
    if stored is not None and _fresh(stored, now=now, max_age=max_age):
        return _from_stored(stored)
    turn = await (await conn.execute(QUERIES["stats_turn"])).fetchone()
    if stored is not None and not (turn and turn[0]):
        return _from_stored(stored)  # another replica is computing them right now
    if turn and turn[0]:
        # Another replica may have stored fresh figures between the first read and the
        # lock (its commit released the lock): read again rather than count twice.
        stored = await (await conn.execute(QUERIES["shared_stats"])).fetchone()
        if stored is not None and _fresh(stored, now=now, max_age=max_age):
            return _from_stored(stored)
    started = time.perf_counter()
    rows = await _scan(conn)
    took = time.perf_counter() - started
    if turn and turn[0]:
        by_pixel, oldest, by_reason = rows
        await conn.execute(
            QUERIES["store_stats"],
            {
                "computed_at": now,
                "took_seconds": took,
                "by_pixel": orjson.dumps([list(r) for r in by_pixel]).decode(),
                "oldest_queued_at": oldest,
                "dlq_by_reason": orjson.dumps([list(r) for r in by_reason]).decode(),
            },
        )
    return queue_stats(*rows)


def _fresh(stored: tuple[Any, ...], *, now: float, max_age: float) -> bool:
    computed_at, took = float(stored[0]), float(stored[1])
    age = now - computed_at
    if age < -max_age:
        return False  # stamped in this replica's future beyond clock jitter: not trusted
    return age < max(max_age, min(STATS_COST_FACTOR * took, STATS_MAX_AGE))


def _from_stored(stored: tuple[Any, ...]) -> QueueStats:
    _, _, by_pixel, oldest, by_reason = stored
    return queue_stats(
        [(str(p), int(d), int(leased), deadline) for p, d, leased, deadline in by_pixel],
        oldest,
        [(str(reason), int(n)) for reason, n in by_reason],
    )
