"""A prototype of the next PostgreSQL step, measured: the queue as segments.

Not capirelay's schema (yet): this measures what ``docs/postgres.md`` names as the step
that could reach 25 µs of database CPU per delivered event, before building it.  A
segment is ONE queue row per enqueue statement holding its queued events as parallel
arrays; a lease takes whole segments and an ack deletes them, where today every event
is a queue row of its own, read by the lease and deleted by the ack.

The script migrates a scratch database with capirelay's migrations (order ledger,
dedup keys, leases, receipt batches are the real tables), adds the prototype table
``capirelay_segments`` and runs, alternating with ``bench/postgres.py``'s statement loop
on the real schema, the same work: enqueue of 100 order events a call (ledger claim,
dedup claim, queue, NOTIFY: one autocommit statement), lease of 500 (the pixel's lease
lock, a lease row naming the segments, the segments marked), ack with a delivered
receipt batch built by capirelay's own receipt code (``delivered_from_row``,
``write_delivered``).  Backend CPU per event from ``/proc/<pid>/schedstat``.

What the prototype leaves out, and a real implementation must add: partial settles
(retries and dead letters of some events of a segment split it), earliest-deadline
order inside and across segments, trace, erasure and statistics through segments, a
key's pin on its segment.  Read the figure as the floor of the design, not its cost.

    .venv/bin/python bench/pg_segments.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PIXEL, print_table
from _pgcpu import backend_pid, process_run_seconds
from postgres import (
    PER_REQUEST,
    drop_database,
    migrated_schema,
    order_batches,
    scratch_database,
    statement_costs,
)

PER_LEASE = 500

SCHEMA = """
CREATE TABLE capirelay_segments (
    id               bigint           PRIMARY KEY,
    pixel_id         text COLLATE "C" NOT NULL,
    first_deadline   double precision NOT NULL,
    queued_at        double precision NOT NULL,
    lease_until      double precision NOT NULL DEFAULT '-Infinity',
    event_names      text[] COLLATE "C" NOT NULL,
    event_ids        text[] COLLATE "C" NOT NULL,
    payloads         bytea[]          NOT NULL,
    event_times      bigint[]         NOT NULL,
    deadlines        double precision[] NOT NULL,
    test_event_codes text[]           NOT NULL,
    sources          text[]           NOT NULL
) WITH (fillfactor = 90);
CREATE SEQUENCE capirelay_segments_id_seq;
CREATE INDEX capirelay_segments_ready ON capirelay_segments (pixel_id, first_deadline, id);
ALTER TABLE capirelay_segments ALTER COLUMN payloads SET COMPRESSION lz4,
    ALTER COLUMN event_ids SET COMPRESSION lz4;
"""

# The enqueue: as capirelay's `enqueue` statement, with one segment row instead of a
# queue row per event; the dedup key names the segment (pinned while it exists).
ENQUEUE = """
WITH ledger AS (
    INSERT INTO capirelay_order_ledger (key, seen_at)
    SELECT k, %(now)s FROM unnest(%(order_keys)b::bytea[]) AS k ORDER BY k
    ON CONFLICT (key) DO NOTHING
    RETURNING key
),
segment AS (SELECT nextval('capirelay_segments_id_seq') AS id),
input AS (
    SELECT t.*
    FROM unnest(%(ranks)b::int[], %(event_names)b::text[], %(event_ids)b::text[],
                %(payloads)b::bytea[], %(event_times)b::bigint[], %(deadlines)b::float8[],
                %(test_event_codes)b::text[], %(sources)b::text[], %(event_order_keys)b::bytea[])
         WITH ORDINALITY AS t (rank, event_name, event_id, payload, event_time, deadline,
                               test_event_code, source, order_key, ord)
    WHERE t.order_key IS NULL OR t.order_key IN (SELECT key FROM ledger)
),
claimed AS (
    INSERT INTO capirelay_dedup AS d (event_id, event_name, pixel_id, seen_at, queue_id)
    SELECT event_id, event_name, %(pixel_id)s, %(now)s, (SELECT id FROM segment) FROM input
    ORDER BY rank
    ON CONFLICT (event_id, event_name, pixel_id)
        DO UPDATE SET seen_at = excluded.seen_at, queue_id = excluded.queue_id
        WHERE d.seen_at <= %(cutoff)s
          AND NOT EXISTS (SELECT 1 FROM capirelay_segments AS s WHERE s.id = d.queue_id)
    RETURNING event_id, event_name
),
kept AS (
    SELECT i.* FROM input AS i JOIN claimed AS c USING (event_id, event_name)
),
queued AS (
    INSERT INTO capirelay_segments (id, pixel_id, first_deadline, queued_at, event_names,
                                    event_ids, payloads, event_times, deadlines,
                                    test_event_codes, sources)
    SELECT (SELECT id FROM segment), %(pixel_id)s, min(deadline), %(now)s,
           array_agg(event_name ORDER BY ord), array_agg(event_id ORDER BY ord),
           array_agg(payload ORDER BY ord), array_agg(event_time ORDER BY ord),
           array_agg(deadline ORDER BY ord), array_agg(test_event_code ORDER BY ord),
           array_agg(source ORDER BY ord)
    FROM kept HAVING count(*) > 0
    RETURNING pixel_id
),
announced AS (
    SELECT count(pg_notify('capirelay_work', pixel_id)) AS pixels FROM queued
)
SELECT k.ord, a.pixels FROM kept AS k CROSS JOIN announced AS a
"""

LOCK_PIXEL = "SELECT pg_advisory_xact_lock(1818583411, hashtext(current_schema() || ' ' || %s))"

# Whole segments, earliest first deadline first, up to the lease size; one lease row.
LEASE = """
WITH picked AS (
    SELECT id, event_names, event_ids, payloads, event_times, deadlines, test_event_codes,
           queued_at
    FROM capirelay_segments
    WHERE pixel_id = %(pixel_id)s AND lease_until <= %(now)s
    ORDER BY first_deadline, id
    LIMIT %(segments)s
),
marked AS (
    UPDATE capirelay_segments AS s SET lease_until = %(lease_until)s
    FROM picked AS p WHERE s.id = p.id
),
granted AS (
    INSERT INTO capirelay_leases (lease_id, pixel_id, owner, until, ids)
    SELECT %(lease_id)s, %(pixel_id)s, %(owner)s, %(lease_until)s, array_agg(id ORDER BY id)
    FROM picked HAVING count(*) > 0
)
SELECT p.id, e.event_name, e.event_id, e.payload, e.event_time, e.deadline,
       e.test_event_code, p.queued_at
FROM picked AS p,
     unnest(p.event_names, p.event_ids, p.payloads, p.event_times, p.deadlines,
            p.test_event_codes) AS e (event_name, event_id, payload, event_time, deadline,
                                      test_event_code)
"""

# The segments the lease holds go, returning what the delivered receipts need (the
# columns of capirelay's `ack_returning`); the lease row goes with them.
ACK = """
WITH acked AS (
    DELETE FROM capirelay_segments
    WHERE id = ANY(ARRAY(SELECT unnest(ids) FROM capirelay_leases
                         WHERE lease_id = %(lease_id)s))
    RETURNING pixel_id, queued_at, event_names, event_ids, sources, test_event_codes, payloads
),
unleased AS (
    DELETE FROM capirelay_leases WHERE lease_id = %(lease_id)s
)
SELECT a.pixel_id, e.event_name, e.event_id, e.source, a.queued_at, 0, '[]'::jsonb,
       e.test_event_code, e.payload
FROM acked AS a,
     unnest(a.event_names, a.event_ids, a.sources, a.test_event_codes, a.payloads)
         AS e (event_name, event_id, source, test_event_code, payload)
"""


async def segment_costs(url: str, events: int) -> list[float]:
    """Backend CPU µs per delivered event: total, enqueue, lease, ack."""
    from capirelay.outbox.postgres._batches import write_delivered
    from capirelay.outbox.postgres._enqueue import enqueue_params
    from capirelay.outbox.receipts import MetaAnswer, delivered_from_row

    app = f"capirelay-bench-segments-{uuid.uuid4().hex[:6]}"
    separator = "&" if "?" in url else "?"
    conn = await psycopg.AsyncConnection.connect(f"{url}{separator}application_name={app}")
    pid = backend_pid(url, app)
    if pid is None:
        raise SystemExit("could not find the benchmark's backend")
    now = time.time()
    work = order_batches(events, now, uuid.uuid4().hex[:6])
    spent = {"enqueue": 0.0, "lease": 0.0, "ack": 0.0}
    await conn.set_autocommit(True)
    start = process_run_seconds(pid) or 0.0
    for batch in work:
        # capirelay's own parameters (each key once, ranks, binary arrays); the
        # prototype's statement takes the pixel as one value (one pixel a segment).
        params = {**enqueue_params(batch, now, "capirelay_work"), "pixel_id": PIXEL}
        await conn.execute(ENQUEUE, params)
    spent["enqueue"] = (process_run_seconds(pid) or 0.0) - start
    await conn.set_autocommit(False)
    delivered = 0
    answer = MetaAnswer(fbtrace_id="Fbench", events_received=PER_LEASE, sent_at=now)
    while True:
        lease_id = uuid.uuid4().hex
        params = {
            "pixel_id": PIXEL,
            "now": time.time(),
            "segments": PER_LEASE // PER_REQUEST,
            "lease_until": time.time() + 60,
            "lease_id": lease_id,
            "owner": str(uuid.uuid4()),
        }
        c0 = process_run_seconds(pid) or 0.0
        async with conn.transaction():
            async with conn.pipeline():
                await conn.execute(LOCK_PIXEL, (PIXEL,))
                cur = await conn.execute(LEASE, params, binary=True)
            leased = await cur.fetchall()
        c1 = process_run_seconds(pid) or 0.0
        spent["lease"] += c1 - c0
        if not leased:
            break
        async with conn.transaction():
            async with conn.pipeline():
                await conn.execute(
                    "SELECT 1 FROM capirelay_leases WHERE lease_id = %s FOR UPDATE", (lease_id,)
                )
                cur = await conn.execute(ACK, {"lease_id": lease_id}, binary=True)
            rows = await cur.fetchall()
            receipts = [delivered_from_row(row, answer, time.time()) for row in rows]
            await write_delivered(conn, receipts)
        spent["ack"] += (process_run_seconds(pid) or 0.0) - c1
        delivered += len(rows)
    await conn.close()
    if delivered != events:
        raise SystemExit(f"delivered {delivered} of {events} events")
    per = {k: v / delivered * 1e6 for k, v in spent.items()}
    return [sum(per.values()), per["enqueue"], per["lease"], per["ack"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs, alternating")
    parser.add_argument("--events", type=int, default=30_000, help="events per run")
    args = parser.parse_args()
    db_name, url = scratch_database()
    runs: dict[str, list[list[float]]] = {"queue rows (capirelay)": [], "segments (prototype)": []}
    try:
        for _ in range(args.rounds):
            migrated_schema(url)
            rows, cpu, _wall = asyncio.run(statement_costs(url, args.events, admin_url=url))
            runs["queue rows (capirelay)"].append([cpu * 1e6, *(float(row[2]) for row in rows[:3])])
            migrated_schema(url)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(SCHEMA.encode())
            runs["segments (prototype)"].append(asyncio.run(segment_costs(url, args.events)))
    finally:
        drop_database(db_name)
    table = []
    for label, values in runs.items():
        for i, run in enumerate(values, 1):
            table.append([label, str(i), *(f"{v:.1f}" for v in run)])
        medians = [statistics.median(column) for column in zip(*values, strict=True)]
        table.append([label, "median", *(f"{v:.2f}" for v in medians)])
    print_table(
        f"Database CPU per delivered event, {args.events:,} order events a run",
        ["schema", "run", "total µs/event", "enqueue µs", "lease µs", "ack µs"],
        table,
    )


if __name__ == "__main__":
    main()
