"""Receipt storage cost: bytes per receipt (table + indexes) on SQLite and PostgreSQL.

Writes ``--receipts`` realistic delivered receipts through the outbox's own
``record_receipts`` (the statement the ack uses), 1,000 per call, then measures
what the receipts table and its indexes take:

* SQLite: the pages of ``receipts`` and its indexes, from the ``dbstat`` table;
* PostgreSQL: ``pg_total_relation_size('capirelay_receipts')`` after ``VACUUM``
  (a scratch schema in the local ``test`` database, dropped at the end).

Each receipt is what a typical delivered Purchase leaves: a 35-character derived
event id, a 16-digit pixel, ``fbtrace_id``, ``events_received``, an order key, and
identity keys for email, phone and external_id; one in ten also keeps one failed
attempt (a retry before the success).  Figures are scaled to one million receipts.

    .venv/bin/python bench/receipts.py                # 200,000 receipts per backend
    .venv/bin/python bench/receipts.py --receipts 50000 --backend sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table
from capirelay.outbox import SQLiteOutbox
from capirelay.outbox.base import Outbox
from capirelay.outbox.receipts import Outcome, Receipt

PIXEL = "1234567890123456"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
CALL = 1000


def _hex(rng: random.Random, n: int) -> str:
    return hashlib.sha256(rng.randbytes(16)).hexdigest()[:n]


def make_receipts(n: int, start: int, seed: int = 7) -> list[Receipt]:
    rng = random.Random(seed + start)
    now = time.time()
    out = []
    for i in range(start, start + n):
        retried = i % 10 == 0
        attempt = {
            "at": now - 30,
            "status": 500,
            "code": 2,
            "subcode": None,
            "message": "Service temporarily unavailable",
            "fbtrace_id": "A" + _hex(rng, 26),
            "retry_class": "transient",
        }
        out.append(
            Receipt(
                pixel_id=PIXEL,
                event_name="Purchase",
                event_id="cr_" + _hex(rng, 32),
                outcome=Outcome.DELIVERED,
                source="backend",
                recorded_at=now,
                received_at=now - 2,
                first_attempt_at=now - (30 if retried else 1),
                last_attempt_at=now - 1,
                attempts=2 if retried else 1,
                fbtrace_id="A" + _hex(rng, 26),
                events_received=100,
                order_key=_hex(rng, 16),
                identity=f"em:{_hex(rng, 16)} external_id:{_hex(rng, 16)} ph:{_hex(rng, 16)}",
                attempt_log=[attempt] if retried else [],
            )
        )
    return out


async def fill(outbox: Outbox, total: int) -> float:
    started = time.perf_counter()
    for start in range(0, total, CALL):
        await outbox.record_receipts(make_receipts(min(CALL, total - start), start))
    return time.perf_counter() - started


async def sqlite_bytes(total: int) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        outbox = SQLiteOutbox(Path(tmp) / "receipts.db")
        await outbox.open()
        seconds = await fill(outbox, total)
        await outbox.close()
        import sqlite3

        conn = sqlite3.connect(Path(tmp) / "receipts.db")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = conn.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name = 'receipts' OR name LIKE 'receipts_by_%'"
        ).fetchone()[0]
        conn.close()
        return int(size), seconds


async def postgres_bytes(total: int) -> tuple[int, float]:
    import psycopg

    from capirelay.outbox.postgres import PostgresOutbox

    schema = f"bench_receipts_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
            outbox = PostgresOutbox(url, pool_size=2, listen=False)
            await outbox.open()
            seconds = await fill(outbox, total)
            await outbox.close()
            admin.execute(f'VACUUM ANALYZE "{schema}".capirelay_receipts')
            row = admin.execute(
                "SELECT pg_total_relation_size(%s::regclass)", (f'"{schema}".capirelay_receipts',)
            ).fetchone()
            return int(row[0]) if row else 0, seconds
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--receipts", type=int, default=200_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    rows = []
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        measure = sqlite_bytes if backend == "sqlite" else postgres_bytes
        size, seconds = asyncio.run(measure(args.receipts))
        per = size / args.receipts
        rows.append(
            [
                backend,
                f"{args.receipts:,}",
                f"{per:,.0f}",
                f"{per * 1_000_000 / 2**20:,.0f}",
                f"{args.receipts / seconds:,.0f}",
            ]
        )
    print_table(
        "Receipt storage (table + indexes)",
        ["backend", "receipts", "bytes/receipt", "MiB per million", "receipts written/s"],
        rows,
    )


if __name__ == "__main__":
    main()
