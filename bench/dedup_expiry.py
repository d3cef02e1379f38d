"""What expiring dedup keys costs when old keys are pinned, on both backends.

A dedup key whose event is still queued is kept however old (its pin): after an outage
of more than 48 hours (a breaker holding a pixel, a token that expired over a weekend)
the oldest keys of the seen_at index are pinned ones, and every other pixel's expired
keys lie behind them.  Each run builds ``--pinned`` such keys and ``--expired``
forgettable ones behind them, directly in the tables, then times one
``Outbox.expire_dedup`` (chunks of ``DEDUP_EXPIRY_CHUNK``, 10,000 keys) and prints the
seconds and the time per expired key.  Expiry that passes the pinned keys once costs
about the same per expired key whatever the pin count; one that passes them again in
every chunk costs ``pinned / 10,000`` times more.

    .venv/bin/python bench/dedup_expiry.py [--postgres postgresql://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table
from capirelay.outbox import DEDUP_WINDOW_SECONDS, Outbox, SQLiteOutbox
from capirelay.outbox.postgres import PostgresOutbox, postgres_conninfo

NOW = 1_800_000_000.0
PINNED_AT = NOW - 4 * 86400  # queued four days ago, still queued
EXPIRED_AT = NOW - 3 * 86400  # delivered three days ago


async def _expire(box: Outbox) -> tuple[int, float]:
    await box.open()
    try:
        start = time.perf_counter()
        removed = await box.expire_dedup(now=NOW)
        return removed, time.perf_counter() - start
    finally:
        await box.close()


def _fill_sqlite(path: Path, pinned: int, expired: int) -> None:
    with sqlite3.connect(path) as conn:
        for prefix, pixel, since, count, queued in (
            ("p", "111", PINNED_AT, pinned, 1),
            ("d", "222", EXPIRED_AT, expired, 0),
        ):
            conn.execute(
                "WITH RECURSIVE n(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM n"
                " WHERE value < ?)"
                " INSERT INTO dedup (pixel_id, event_name, event_id, seen_at, queued)"
                " SELECT ?, 'Purchase', ? || value, ? + value * 0.001, ? FROM n",
                (count, pixel, prefix, since, queued),
            )


async def sqlite_run(pinned: int, expired: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "outbox.db"
        box = SQLiteOutbox(path)
        await box.open()  # migrates
        await box.close()
        _fill_sqlite(path, pinned, expired)
        return await _expire(SQLiteOutbox(path))


async def postgres_run(url: str, pinned: int, expired: int) -> tuple[int, float]:
    schema = f"bench_expiry_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_conninfo(url), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    scoped = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    try:
        box = PostgresOutbox(scoped, pool_size=1, listen=False)
        await box.open()  # migrates
        await box.close()
        with psycopg.connect(postgres_conninfo(scoped), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO capirelay_queue (id, pixel_id, event_name, event_id, payload,"
                " event_time, deadline, source, queued_at, available_at)"
                " OVERRIDING SYSTEM VALUE SELECT n, '111', 'Purchase', 'p' || n, '\\x7b7d',"
                " 1, %s, 'api', %s, %s FROM generate_series(1, %s) AS n",
                (NOW + 86400, PINNED_AT, PINNED_AT, pinned),
            )
            conn.execute(
                "INSERT INTO capirelay_dedup (event_id, event_name, pixel_id, seen_at, queue_id)"
                " SELECT 'p' || n, 'Purchase', '111', %s + n * 0.001, n"
                " FROM generate_series(1, %s) AS n",
                (PINNED_AT, pinned),
            )
            conn.execute(
                "INSERT INTO capirelay_dedup (event_id, event_name, pixel_id, seen_at, queue_id)"
                " SELECT 'd' || n, 'Purchase', '222', %s + n * 0.001, -n"
                " FROM generate_series(1, %s) AS n",
                (EXPIRED_AT, expired),
            )
            conn.execute("VACUUM ANALYZE")
        return await _expire(PostgresOutbox(scoped, pool_size=1, listen=False))
    finally:
        with psycopg.connect(postgres_conninfo(url), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--postgres", help="also run on this PostgreSQL database")
    parser.add_argument("--expired", type=int, default=100_000)
    parser.add_argument("--pinned", default="0,100000,200000", help="pin counts, comma-separated")
    args = parser.parse_args()
    assert EXPIRED_AT <= NOW - DEDUP_WINDOW_SECONDS
    rows = []
    for pinned in (int(p) for p in args.pinned.split(",")):
        runs = [("SQLite", lambda n=pinned: sqlite_run(n, args.expired))]
        if args.postgres:
            runs.append(
                (
                    "PostgreSQL",
                    lambda n=pinned, url=args.postgres: postgres_run(url, n, args.expired),
                )
            )
        for name, run in runs:
            removed, seconds = asyncio.run(run())
            if removed != args.expired:
                raise RuntimeError(f"{name}: removed {removed} of {args.expired}")
            rows.append(
                [
                    name,
                    f"{pinned:,}",
                    f"{removed:,}",
                    f"{seconds:.2f}",
                    f"{seconds / removed * 1e6:.1f}",
                ]
            )
    print_table(
        "Dedup expiry behind pinned keys (one expire_dedup, chunks of 10,000)",
        ["storage", "pinned keys", "expired keys", "seconds", "µs per expired key"],
        rows,
    )


if __name__ == "__main__":
    main()
