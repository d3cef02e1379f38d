"""What a PostgreSQL lease (and a due-pixel poll) costs against the events other leases hold.

Fills a scratch database with a backlog of one pixel, then holds 0, 2, 4, 8 and 12
leases of 1,000 events (as replicas times ``max_in_flight`` batches in flight would) and
times the lease statement for the next 1,000 with ``EXPLAIN ANALYZE`` (the server's
execution time; rolled back, so every repetition sees the same queue).  Prints the
median of ``--repeat`` runs per row.

Before migration 0013 a lease checked every ready row it passed against the held ids,
and the held rows came first in deadline order: its cost grew with the events in
flight.  ``--statement due_pixels`` times every replica's poll for pixels with work
(``poll_seconds``), ``--statement next_due_at_pixel`` an idle worker's question, against
the same leases; ``--tied`` gives every event one deadline (as a busy second does:
deadlines are whole seconds).  To compare with older code, run it with ``PYTHONPATH`` pointing at
that code's ``src``:

    .venv/bin/python bench/pg_lease_held.py
    PYTHONPATH=/tmp/before/src .venv/bin/python bench/pg_lease_held.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table
from postgres import drop_database, scratch_database

T0 = 1_800_000_000.0
PIXEL = "111"
BATCH = 1000
HELD = (0, 2, 4, 8, 12)


STATEMENTS = ("lease", "due_pixels", "next_due_at_pixel")


async def measure(
    url: str, backlog: int, repeat: int, statement: str, tied: bool
) -> list[list[str]]:
    from capirelay.outbox import NewEvent
    from capirelay.outbox.postgres import PostgresOutbox
    from capirelay.outbox.postgres._statements import QUERIES
    from capirelay.outbox.postgres.migrate import migrate_url

    await migrate_url(url)
    box = PostgresOutbox(url, pool_size=2, listen=False)
    await box.open()
    try:
        for start in range(0, backlog, BATCH):
            await box.enqueue(
                [
                    NewEvent(
                        PIXEL, "Purchase", f"e{i}", b"{}", int(T0), T0 + 86400 + (0 if tied else i)
                    )
                    for i in range(start, start + BATCH)
                ],
                now=T0,
            )
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        sql = QUERIES[statement]
        rows: list[list[str]] = []
        held = 0
        for target in HELD:
            while held < target:
                await box.lease(PIXEL, limit=BATCH, lease_seconds=600, now=T0)
                held += 1
            times = []
            with psycopg.connect(url) as conn:
                for n in range(repeat):
                    params = {
                        "pixel_id": PIXEL,
                        "now": T0,
                        "limit": BATCH,
                        "lease_id": f"bench-{target}-{n}",
                        "owner": None,
                        "lease_until": T0 + 600,
                        "urgent_before": T0 + 3600,  # ignored by statements before 0013
                    }
                    # The lease transaction's own settings (`lock_pixel`).
                    conn.execute(
                        "SELECT set_config('enable_bitmapscan', 'off', true),"
                        " set_config('enable_seqscan', 'off', true)"
                    )
                    row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params).fetchone()
                    conn.rollback()
                    assert row is not None
                    times.append(float(row[0][0]["Execution Time"]))
            ms = statistics.median(times)
            per_event = f"{ms * 1000 / BATCH:.2f}" if statement == "lease" else "-"
            rows.append([f"{target * BATCH:,}", f"{ms:.3f}", per_event])
        return rows
    finally:
        await box.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backlog", type=int, default=30_000, help="queued events")
    parser.add_argument("--repeat", type=int, default=7, help="timings per row (median)")
    parser.add_argument("--statement", choices=STATEMENTS, default="lease", help="what to time")
    parser.add_argument(
        "--tied",
        action="store_true",
        help="every event with the same deadline, as every event of one second has",
    )
    args = parser.parse_args()
    if args.backlog < (max(HELD) + 1) * BATCH:
        parser.error(f"--backlog must be at least {(max(HELD) + 1) * BATCH}")
    db_name, url = scratch_database()
    try:
        rows = asyncio.run(measure(url, args.backlog, args.repeat, args.statement, args.tied))
    finally:
        drop_database(db_name)
    print_table(
        f"{args.statement} ({BATCH:,} events a lease) against the events other leases hold "
        f"(backlog {args.backlog:,}{', one deadline' if args.tied else ''}, "
        f"median of {args.repeat})",
        ["events held by active leases", f"{args.statement} ms", "µs per leased event"],
        rows,
    )


if __name__ == "__main__":
    main()
