"""Pruning the order ledger on PostgreSQL walks a large cap only when the ledger may have
reached it: the walk (``order_ledger_cap``) reads the seen_at index from the newest entry
down to the cap, half a second for the default 10 million, on every replica every ten
minutes, and finds nothing while the ledger is far below the cap."""

from __future__ import annotations

from pathlib import Path

import psycopg

from capirelay.outbox.postgres import PostgresOutbox
from capirelay.outbox.postgres.outbox import LEDGER_CAP_ALWAYS_WALKED

NOW = 1_800_000_000.0
YEAR = 365 * 86400.0
WALK = "OFFSET"  # the cap's statement, as libpq's trace of the connection shows it


def _fill(url: str, count: int, *, analyze: bool, first: int = 1) -> None:
    """``count`` entries, one a second back from NOW (from the ``first``-th second); the
    planner's count refreshed or (autovacuum off for the table) left as it was."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE capirelay_order_ledger SET (autovacuum_enabled = false)")
        conn.execute(
            "INSERT INTO capirelay_order_ledger (key, seen_at)"
            " SELECT substring(sha256(n::text::bytea) from 1 for 16), %s - n"
            " FROM generate_series(%s::int, %s::int) AS n",
            (NOW, first, first + count - 1),
        )
        if analyze:
            conn.execute("ANALYZE capirelay_order_ledger")


async def _prune(box: PostgresOutbox, max_entries: int, trace: Path) -> tuple[int, bool]:
    """Entries pruned, and whether the cap was walked."""
    with trace.open("w") as sink:
        async with box._pool.connection() as conn:  # the pool's only connection
            conn.pgconn.trace(sink.fileno())
        removed = await box.prune_order_ledger(
            now=NOW, retention_seconds=YEAR, max_entries=max_entries
        )
        async with box._pool.connection() as conn:
            conn.pgconn.untrace()
    return removed, WALK in trace.read_text()


async def test_a_large_cap_is_walked_only_once_the_ledger_may_reach_it(
    postgres_url: str, tmp_path: Path
) -> None:
    big = 4 * LEDGER_CAP_ALWAYS_WALKED
    box = PostgresOutbox(postgres_url, pool_size=1, listen=False)
    await box.open()
    try:
        _fill(postgres_url, 3_000, analyze=True)
        # Far below the cap by the estimate: no walk, nothing pruned (none to prune).
        assert await _prune(box, big, tmp_path / "far.trace") == (0, False)
        assert await box.order_ledger_size() == 3_000
        # A small cap is always walked, and enforced exactly.
        assert await _prune(box, 2_000, tmp_path / "small.trace") == (1_000, True)
        assert await box.order_ledger_size() == 2_000
    finally:
        await box.close()


async def test_the_cap_is_walked_without_an_estimate_and_near_the_cap(
    postgres_url: str, tmp_path: Path
) -> None:
    cap = LEDGER_CAP_ALWAYS_WALKED
    box = PostgresOutbox(postgres_url, pool_size=1, listen=False)
    await box.open()
    try:
        # Never analyzed (reltuples -1): the walk runs, and the cap holds exactly.
        _fill(postgres_url, cap + 500, analyze=False)
        assert await _prune(box, cap, tmp_path / "unknown.trace") == (500, True)
        assert await box.order_ledger_size() == cap
        # Estimated at half the cap or more: walked, although under it.
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute("ANALYZE capirelay_order_ledger")
        assert await _prune(box, 2 * cap, tmp_path / "half.trace") == (0, True)
        assert await box.order_ledger_size() == cap
    finally:
        await box.close()


async def test_a_bulk_load_counts_before_any_analyze(postgres_url: str, tmp_path: Path) -> None:
    """Rows inserted since the last count (an import, a move from SQLite) count at once:
    the estimate scales the rows counted per page by the pages the ledger has now."""
    cap = LEDGER_CAP_ALWAYS_WALKED
    box = PostgresOutbox(postgres_url, pool_size=1, listen=False)
    await box.open()
    try:
        _fill(postgres_url, 3_000, analyze=True)
        assert await _prune(box, cap, tmp_path / "before.trace") == (0, False)
        _fill(postgres_url, cap, analyze=False, first=3_001)  # counted: still 3,000
        assert await _prune(box, cap, tmp_path / "after.trace") == (3_000, True)
        assert await box.order_ledger_size() == cap
    finally:
        await box.close()
