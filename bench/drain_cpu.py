"""Where the CPU goes while PostgreSQL replicas drain a backlog: per process group.

Fills a backlog through one token-less replica, starts 1 or 2 replicas with the token
behind a hold on the pixel (as ``bench/postgres.py`` does), lifts the hold, and reads
``utime + stime`` of every process from ``/proc`` before and after the drain, grouped
as PostgreSQL (every ``postgres`` process: backends, WAL writer, checkpointer,
autovacuum), the gateway replicas and the Graph API emulator.  Prints a table: events/s
and CPU microseconds per delivered event of each group, alternating 1 and 2 replicas.

``--statements`` also samples ``pg_stat_activity`` every 5 ms during the drain and
prints which statements were running most often (a poor man's profile of the database).

    .venv/bin/python bench/drain_cpu.py                    # 100,000 events, 2 rounds
    .venv/bin/python bench/drain_cpu.py --events 50000 --rounds 3 --statements
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, start_emulator
from _pgcpu import process_cpu_seconds
from postgres import (
    accepted,
    drop_database,
    fill_backlog,
    hold_delivery,
    release_delivery,
    reset_schema,
    scratch_database,
    start_replicas,
    write_config,
)

GROUPS = ("postgres", "replicas", "emulator")


def group_cpu() -> dict[tuple[str, int], float]:
    """CPU seconds of every process of the three groups, by (group, pid)."""
    found: dict[tuple[str, int], float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", encoding="utf-8", errors="replace") as handle:
                comm = handle.read().strip()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        seconds = process_cpu_seconds(int(entry))
        if seconds is None:
            continue
        if comm.startswith("postgres"):
            group = "postgres"
        elif "capirelay serve" in cmdline or comm == "capirelay":
            group = "replicas"
        elif "emulator" in cmdline:
            group = "emulator"
        else:
            continue
        found[(group, int(entry))] = seconds
    return found


def drain(
    config: Path, url: str, count: int, graph_url: str, events: int, sample: Counter[str] | None
) -> list[str]:
    delivered, target = fill_backlog(config, url, graph_url, events, uuid.uuid4().hex[:6])
    with psycopg.connect(url, autocommit=True) as conn:
        hold_delivery(conn)
        replicas = start_replicas(config, url, count, with_token=True)
        try:
            before = group_cpu()
            released = release_delivery(conn)
            while accepted(graph_url) < target:
                if time.perf_counter() - released > 600:
                    raise RuntimeError("drain did not finish in 10 minutes")
                if sample is not None:
                    for (query,) in conn.execute(
                        "SELECT regexp_replace(left(query, 200), '\\s+', ' ', 'g')"
                        " FROM pg_stat_activity"
                        " WHERE state = 'active' AND pid <> pg_backend_pid()"
                    ).fetchall():
                        sample[str(query)[:90]] += 1
                time.sleep(0.005)
            seconds = time.perf_counter() - released
            after = group_cpu()
        finally:
            for replica in replicas:
                replica.stop()
    spent = dict.fromkeys(GROUPS, 0.0)
    for (group, pid), value in after.items():
        spent[group] += value - before.get((group, pid), 0.0)
    return [
        str(count),
        f"{delivered / seconds:,.0f}",
        *(f"{spent[g] / delivered * 1e6:.1f} ({spent[g] / seconds:.0%})" for g in GROUPS),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="backlog per drain")
    parser.add_argument("--rounds", type=int, default=2, help="1-then-2-replica rounds")
    parser.add_argument(
        "--statements", action="store_true", help="sample pg_stat_activity during drains"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="capirelay-draincpu-"))
    emulator, graph_url = start_emulator()
    config = write_config(tmp, graph_url)
    db_name, url = scratch_database()
    sample: Counter[str] | None = Counter() if args.statements else None
    rows = []
    try:
        for _ in range(args.rounds):
            for count in (1, 2):
                reset_schema(url)
                rows.append(drain(config, url, count, graph_url, args.events, sample))
                print(f"  done: {count} replica(s)", file=sys.stderr)
    finally:
        drop_database(db_name)
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(10)
    print_table(
        f"Drain of {args.events:,} events: CPU us per delivered event (share of one core)",
        ["replicas", "events/s", *GROUPS],
        rows,
    )
    if sample is not None:
        print_table(
            "Statements seen running (pg_stat_activity every 5 ms, all drains)",
            ["samples", "statement (first 90 characters)"],
            [[str(n), q] for q, n in sample.most_common(12)],
        )


if __name__ == "__main__":
    main()
