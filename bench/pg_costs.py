"""A/B the PostgreSQL outbox statements' database CPU against a schema change.

Runs ``bench/postgres.py``'s statement loop (enqueue of 100 order events per call,
lease and ack with receipts of 500, every COMMIT durable; backend CPU from ``/proc``)
on a freshly migrated scratch schema, alternating: once as migrated, once after the SQL
given with ``--alter`` (say, an index option to try).  Prints every run and the medians,
so a change of a microsecond can be told from the run-to-run noise (about ±2 µs here).

    .venv/bin/python bench/pg_costs.py --rounds 4 \\
        --alter "ALTER INDEX capirelay_receipt_batches_by_event_id SET (fastupdate = on)"
    .venv/bin/python bench/pg_costs.py --rounds 5 --alter-file bench/sql/collation_default.sql
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
from postgres import drop_database, migrated_schema, scratch_database, statement_costs

PHASES = ("enqueue", "lease", "ack")


def one_run(url: str, events: int, alter: list[str]) -> list[float]:
    """Total and per-phase backend CPU µs per delivered event of one statement loop."""
    migrated_schema(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in alter:
            conn.execute(statement.encode())
    rows, cpu, _wall = asyncio.run(statement_costs(url, events, admin_url=url))
    return [cpu * 1e6, *(float(row[2]) for row in rows[: len(PHASES)])]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--alter", action="append", default=[], help="SQL, repeatable")
    parser.add_argument(
        "--alter-file", action="append", default=[], type=Path, help="a file of SQL, repeatable"
    )
    parser.add_argument("--rounds", type=int, default=4, help="pairs of runs, alternating")
    parser.add_argument("--events", type=int, default=30_000, help="events per run")
    args = parser.parse_args()
    args.alter += [path.read_text() for path in args.alter_file]
    if not args.alter:
        parser.error("give the schema change with --alter SQL or --alter-file FILE")
    db_name, url = scratch_database()
    runs: dict[str, list[list[float]]] = {"as migrated": [], "altered": []}
    try:
        for _ in range(args.rounds):
            runs["as migrated"].append(one_run(url, args.events, []))
            runs["altered"].append(one_run(url, args.events, args.alter))
    finally:
        drop_database(db_name)
    header = ["schema", "run", "total µs/event", *(f"{p} µs" for p in PHASES)]
    rows = [
        [name, str(n + 1), *(f"{v:.1f}" for v in values)]
        for name, results in runs.items()
        for n, values in enumerate(results)
    ]
    rows += [
        [name, "median", *(f"{statistics.median(col):.2f}" for col in zip(*results, strict=True))]
        for name, results in runs.items()
    ]
    print_table(f"Database CPU per delivered event, altered by: {'; '.join(args.alter)}",
                header, rows)  # fmt: skip


if __name__ == "__main__":
    main()
