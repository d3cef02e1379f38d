"""Queue statistics shared between replicas (migration 0015).

The gauges and /metrics scrapes ask for figures up to ``max_age`` old: one replica at a
time counts the queue and stores the result; the others read it.  What must hold: exact
callers (``max_age`` 0) always count; stored figures are served while fresh and
recounted when not; a slow count stretches the freshness (ten times its duration); a
replica never waits for another one's count; figures are the same whichever replica
serves them.
"""

from __future__ import annotations

import psycopg
import pytest
from pg_replicas import OpenReplica

from capirelay.outbox import NewEvent
from capirelay.outbox.base import DeadLetterReason
from capirelay.outbox.postgres._stats import STATS_COST_FACTOR, STATS_MAX_AGE

T0 = 1_800_000_000.0
DAY = 86400.0


def events(prefix: str, n: int, pixel: str = "111") -> list[NewEvent]:
    return [
        NewEvent(pixel, "Purchase", f"{prefix}{i}", b"{}", int(T0), T0 + DAY + i) for i in range(n)
    ]


def _stored(url: str) -> tuple[float, float] | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT computed_at, took_seconds FROM capirelay_queue_stats WHERE id = 1"
        ).fetchone()
    return None if row is None else (float(row[0]), float(row[1]))


async def test_one_replica_counts_and_the_others_read_what_it_stored(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    a, b = await open_replica(listen=False), await open_replica(listen=False)
    await a.enqueue(events("a", 3) + events("b", 2, pixel="222"), now=T0)
    first = await a.stats(now=T0, max_age=5)
    assert first.depth == 5 and first.depth_by_pixel == {"111": 3, "222": 2}
    stored = _stored(postgres_url)
    assert stored is not None and stored[0] == T0
    await a.enqueue(events("c", 4), now=T0)
    # Within max_age the other replica reads the stored figures: the 4 new events are
    # not counted yet, and nothing is stored anew.
    assert await b.stats(now=T0 + 4, max_age=5) == first
    assert _stored(postgres_url) == stored
    # Exact callers count every time.
    assert (await b.stats(now=T0 + 4)).depth == 9
    # Past max_age the first replica to ask counts again and stores it.
    later = await b.stats(now=T0 + 6, max_age=5)
    assert later.depth == 9 and later.depth_by_pixel == {"111": 7, "222": 2}
    restored = _stored(postgres_url)
    assert restored is not None and restored[0] == T0 + 6
    assert await a.stats(now=T0 + 7, max_age=5) == later


async def test_stored_figures_keep_leases_deadlines_and_dead_letters(
    open_replica: OpenReplica,
) -> None:
    a, b = await open_replica(listen=False), await open_replica(listen=False)
    await a.enqueue(events("a", 5), now=T0)
    leased = await a.lease("111", limit=2, lease_seconds=30, now=T0)
    await a.dead_letter(
        [leased[0].id],
        reason=DeadLetterReason.INVALID,
        attempt=None,
        now=T0,
        lease_id=leased[0].lease_id,
    )
    exact = await a.stats(now=T0)
    assert exact.leased == 1 and exact.dlq_size == 1
    computed = await a.stats(now=T0, max_age=5)
    assert computed == exact
    assert await b.stats(now=T0 + 1, max_age=5) == exact


@pytest.mark.parametrize(
    ("took", "served_for"),
    [(3.0, STATS_COST_FACTOR * 3.0), (30.0, STATS_MAX_AGE)],
    ids=["ten-times-its-duration", "never-a-minute-old"],
)
async def test_a_slow_count_is_not_repeated_for_ten_times_its_duration_up_to_a_minute(
    open_replica: OpenReplica, postgres_url: str, took: float, served_for: float
) -> None:
    box = await open_replica(listen=False)
    await box.enqueue(events("a", 1), now=T0)
    await box.stats(now=T0, max_age=5)
    with psycopg.connect(postgres_url) as conn:  # as if that count had taken `took` s
        conn.execute("UPDATE capirelay_queue_stats SET took_seconds = %s", (took,))
    await box.enqueue(events("b", 1), now=T0)
    assert (await box.stats(now=T0 + served_for - 1, max_age=5)).depth == 1
    assert (await box.stats(now=T0 + served_for + 1, max_age=5)).depth == 2


async def test_a_replica_never_waits_for_another_replicas_count(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    a, b = await open_replica(listen=False), await open_replica(listen=False)
    await a.enqueue(events("a", 2), now=T0)
    stale = await a.stats(now=T0, max_age=5)
    await a.enqueue(events("b", 3), now=T0)
    with psycopg.connect(postgres_url) as other:
        # Another replica is counting right now: it holds the stats lock.
        got = other.execute(
            "SELECT pg_try_advisory_xact_lock(1818583412,"
            " hashtext(current_schema() || ' queue stats'))"
        ).fetchone()
        assert got == (True,)
        # Stale figures: served as they are rather than waiting or counting twice.
        assert await b.stats(now=T0 + 60, max_age=5) == stale
        # With nothing stored yet a replica counts for itself (and stores nothing).
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("DELETE FROM capirelay_queue_stats")
        assert (await b.stats(now=T0 + 60, max_age=5)).depth == 5
        assert _stored(postgres_url) is None
        other.rollback()
    assert (await b.stats(now=T0 + 60, max_age=5)).depth == 5
    assert _stored(postgres_url) is not None


async def test_figures_stamped_in_a_replicas_future_are_not_served(
    open_replica: OpenReplica,
) -> None:
    # Replica a's clock runs 10 minutes ahead: b must not serve a's figures for 10 minutes.
    a, b = await open_replica(listen=False), await open_replica(listen=False)
    await a.enqueue(events("a", 3), now=T0)
    assert (await a.stats(now=T0 + 600, max_age=5)).depth == 3
    await b.enqueue(events("b", 7), now=T0)
    assert (await b.stats(now=T0 + 30, max_age=5)).depth == 10
