"""What the order ledger costs: enqueue time per event and disk per entry, on both backends.

Enqueues ``--events`` events in requests of ``--batch`` into a fresh outbox twice: plain
events (dedup row only) and order events (dedup row + ledger entry), and prints the
difference per event and the ledger's size per entry.  SQLite runs in a temporary
directory with the gateway's default ``synchronous=FULL``; PostgreSQL (``--postgres URL``)
in a schema of its own, dropped afterwards.

    .venv/bin/python bench/order_ledger.py --events 20000 [--postgres postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import orjson
import psycopg

from capirelay.orders import order_key
from capirelay.outbox import NewEvent, Outbox, SQLiteOutbox
from capirelay.outbox.postgres import PostgresOutbox, postgres_conninfo

PIXEL = "1234567890"


def _events(count: int, *, orders: bool, tag: str) -> list[NewEvent]:
    now = int(time.time())
    out: list[NewEvent] = []
    for n in range(count):
        payload = {
            "event_name": "Purchase",
            "event_id": f"{tag}-{n}",
            "event_time": now,
            "custom_data": {"value": 10.0, "currency": "EUR", "order_id": f"{tag}-order-{n}"},
        }
        event = NewEvent(PIXEL, "Purchase", f"{tag}-{n}", orjson.dumps(payload), now, now + 86400)
        if orders:
            event = replace(event, order_key=order_key(PIXEL, payload, test_event_code=None))
        out.append(event)
    return out


async def _enqueue_seconds(box: Outbox, events: list[NewEvent], batch: int) -> float:
    now = time.time()
    start = time.perf_counter()
    for i in range(0, len(events), batch):
        await box.enqueue(events[i : i + batch], now=now)
    return time.perf_counter() - start


async def _sqlite(count: int, batch: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for orders in (False, True):
            path = Path(tmp) / f"ledger-{orders}.db"
            box = SQLiteOutbox(path)
            await box.open()
            seconds = await _enqueue_seconds(box, _events(count, orders=orders, tag="s"), batch)
            await box.close()
            results.append(seconds)
        with sqlite3.connect(Path(tmp) / "ledger-True.db") as conn:
            pages = conn.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'order_ledger%'"
            ).fetchone()[0]
    return results[0], results[1], pages / count


async def _postgres(url: str, count: int, batch: int) -> tuple[float, float, float]:
    schema = f"bench_ledger_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_conninfo(url), autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            sep = "&" if "?" in url else "?"
            schema_url = f"{url}{sep}options=-csearch_path%3D{schema}"
            results = []
            for orders in (False, True):
                box = PostgresOutbox(schema_url, listen=False)
                await box.open()
                tag = f"p{orders}"
                seconds = await _enqueue_seconds(box, _events(count, orders=orders, tag=tag), batch)
                await box.close()
                results.append(seconds)
            size = admin.execute(
                f"SELECT pg_total_relation_size('\"{schema}\".capirelay_order_ledger')"
            ).fetchone()
            assert size is not None
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return results[0], results[1], size[0] / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--postgres", default=None)
    args = parser.parse_args()
    print("| backend | plain µs/event | order µs/event | ledger cost µs/event | bytes/entry |")
    print("|---|---:|---:|---:|---:|")
    runs = [("SQLite", _sqlite(args.events, args.batch))]
    if args.postgres:
        runs.append(("PostgreSQL", _postgres(args.postgres, args.events, args.batch)))
    for name, run in runs:
        plain, orders, per_entry = asyncio.run(run)
        per = 1e6 / args.events
        print(
            f"| {name} | {plain * per:.1f} | {orders * per:.1f} | "
            f"{(orders - plain) * per:+.1f} | {per_entry:.0f} |"
        )


if __name__ == "__main__":
    main()
