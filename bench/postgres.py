"""Scale-out benchmark: batched ingest and delivery drain on SQLite, PostgreSQL with one
replica and PostgreSQL with two replicas, in one run; plus the database cost per event.

Everything runs on this machine, over loopback: the Graph API emulator and every
gateway replica are separate processes (``capirelay serve``, as deployed), this
script is the load generator.  PostgreSQL is the local service (trust auth);
the script creates a scratch database and drops it at the end.

    .venv/bin/python bench/postgres.py           # 100,000 events per scenario
    .venv/bin/python bench/postgres.py --quick   # 20,000 events, same shape

Phases, per scenario
1. ingest: ``POST /v1/events`` with 100 events a request, 16 connections spread
   over the replicas.  No access token is configured, so delivery holds the
   events queued and the figure is ingest alone, each request durable (COMMIT,
   or SQLite synchronous=FULL) before its 202.
2. drain: the replicas restart with the token and deliver the backlog to the
   emulator; events/s from restart to the last accepted event.
3. (PostgreSQL only) per-event database cost of the outbox statements, timed
   from one client on an idle server: enqueue (100-event requests), lease +
   ack (500-event batches).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HOST,
    KEY,
    PIXEL,
    TOKEN,
    free_port,
    print_table,
    start_emulator,
    stop_process,
    wait_http,
)
from _common import events_requests as _events_requests
from _loadgen import LoadResult, run_load

PER_REQUEST = 100
CONNECTIONS = 16
POSTGRES_SERVER = os.environ.get("CAPIRELAY_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1/test")
CAPIRELAY = str(Path(sys.executable).with_name("capirelay"))


def raw_event(i: int, now: int, run: str) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": now,
        "event_id": f"{run}-{i}",
        "action_source": "website",
        "event_source_url": "https://shop.bench.example/thanks",
        "user_data": {
            "email": f"shopper{i}@example.com",
            "phone": f"+1 650 555 {i % 10000:04d}",
            "client_ip_address": f"203.0.{(i >> 8) % 256}.{i % 256}",
            "client_user_agent": "Mozilla/5.0 (bench)",
        },
        "custom_data": {"value": 10.0 + i % 90, "currency": "USD"},
    }


def write_config(tmp: Path, graph_url: str) -> Path:
    config = tmp / "capirelay.toml"
    config.write_text(
        f"""graph_url = "{graph_url}"
postgres_pool_size = 8
sqlite_synchronous = "FULL"
[pixels.{PIXEL}]
access_token = {{ env = "BENCH_ACCESS_TOKEN" }}
[ingest_keys.bench]
key = {{ env = "BENCH_INGEST_KEY" }}
[delivery]
batch_size = 1000
linger_ms = 20
max_in_flight = 4
poll_seconds = 0.2
"""
    )
    return config


class Replica:
    """``capirelay serve`` as a subprocess, storage from ``CAPIRELAY_STORAGE``."""

    def __init__(self, config: Path, storage: str, *, with_token: bool) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPIRELAY_")}
        env.update(CAPIRELAY_STORAGE=storage, BENCH_INGEST_KEY=KEY)
        if with_token:
            env["BENCH_ACCESS_TOKEN"] = TOKEN
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                CAPIRELAY,
                "serve",
                "--config",
                str(config),
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            cwd=config.parent,
            env=env,
        )
        wait_http(f"http://{HOST}:{self.port}/readyz", interval=0.05)

    def stop(self) -> None:
        stop_process(self.proc)


def start_replicas(config: Path, storage: str, count: int, *, with_token: bool) -> list[Replica]:
    return [Replica(config, storage, with_token=with_token) for _ in range(count)]


def events_requests(n: int, port: int, run: str) -> list[bytes]:
    now = int(time.time())
    return _events_requests(port, n, PER_REQUEST, lambda i: raw_event(i, now, run))


async def _load_all(replicas: Sequence[Replica], requests: list[list[bytes]]) -> LoadResult:
    per_replica = max(1, CONNECTIONS // len(replicas))
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            run_load(
                HOST,
                r.port,
                rq.__getitem__,
                total=len(rq),
                connections=per_replica,
                max_seconds=300,
            )
            for r, rq in zip(replicas, requests, strict=True)
        )
    )
    merged = LoadResult(seconds=time.perf_counter() - started)
    for result in results:
        merged.requests += result.requests
        merged.latencies += result.latencies
        for status, count in result.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + count
    return merged


def ingest(replicas: Sequence[Replica], total_requests: int, run: str) -> LoadResult:
    share = total_requests // len(replicas)
    requests = [events_requests(share, r.port, f"{run}-r{n}") for n, r in enumerate(replicas)]
    return asyncio.run(_load_all(replicas, requests))


def accepted(graph_url: str) -> int:
    stats = httpx.get(f"{graph_url}/_emulator/stats", timeout=5).json()
    return int(stats.get("events_accepted", 0))


def drain(config: Path, storage: str, count: int, graph_url: str, target: int) -> float:
    started = time.perf_counter()
    replicas = start_replicas(config, storage, count, with_token=True)
    try:
        while accepted(graph_url) < target:
            if time.perf_counter() - started > 600:
                raise RuntimeError("drain did not finish in 10 minutes")
            time.sleep(0.05)
        return time.perf_counter() - started
    finally:
        for replica in replicas:
            replica.stop()


# --------------------------------------------------------------- database cost


async def statement_costs(storage: str, events: int) -> list[list[str]]:
    """Per-event wall time of enqueue / lease / ack from one client on an idle server."""
    from capirelay.outbox import NewEvent
    from capirelay.outbox.postgres import PostgresOutbox

    outbox = PostgresOutbox(storage, pool_size=1, listen=False)
    await outbox.open()
    payload = orjson.dumps(raw_event(0, int(time.time()), "cost"))
    now = time.time()
    batches = [
        [
            NewEvent(PIXEL, "Purchase", f"cost-{b}-{i}", payload, int(now), now + 86400)
            for i in range(PER_REQUEST)
        ]
        for b in range(events // PER_REQUEST)
    ]
    try:
        started = time.perf_counter()
        for batch in batches:
            await outbox.enqueue(batch, now=now)
        enqueue_s = time.perf_counter() - started
        lease_s = ack_s = 0.0
        leased_total = 0
        while True:
            t0 = time.perf_counter()
            leased = await outbox.lease(PIXEL, limit=500, lease_seconds=60, now=time.time())
            t1 = time.perf_counter()
            if not leased:
                break
            await outbox.ack([e.id for e in leased], now=time.time(), lease_id=leased[0].lease_id)
            lease_s += t1 - t0
            ack_s += time.perf_counter() - t1
            leased_total += len(leased)
    finally:
        await outbox.close()
    n = len(batches) * PER_REQUEST
    per_event_total = enqueue_s / n + (lease_s + ack_s) / leased_total
    return [
        _cost_row("enqueue (dedup + insert + NOTIFY), 100 events/call", enqueue_s, n, 100),
        _cost_row("lease (promote + SKIP LOCKED), 500 events/call", lease_s, leased_total, 500),
        _cost_row("ack (DELETE ... = ANY(ids)), 500 events/call", ack_s, leased_total, 500),
        ["total per delivered event", f"{per_event_total * 1e6:.1f}", ""],
    ]


def _cost_row(name: str, seconds: float, events: int, per_call: int) -> list[str]:
    return [name, f"{seconds / events * 1e6:.1f}", f"{events / per_call / seconds:,.0f} calls/s"]


# ------------------------------------------------------------------------ main


def scratch_database() -> tuple[str, str]:
    name = f"capirelay_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_SERVER, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, f"{POSTGRES_SERVER.rpartition('/')[0]}/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(POSTGRES_SERVER, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_schema(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events per scenario")
    args = parser.parse_args()
    total_requests = 200 if args.quick else 1000
    events = total_requests * PER_REQUEST

    tmp = Path(tempfile.mkdtemp(prefix="capirelay-pgbench-"))
    emulator, graph_url = start_emulator()
    config = write_config(tmp, graph_url)
    db_name, pg_url = scratch_database()
    print(
        f"# capirelay scale-out benchmark ({os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}, {events:,} events per scenario)"
    )
    scenarios = [
        ("SQLite (FULL), 1 replica", f"sqlite:///{tmp / 'bench.db'}", 1),
        ("PostgreSQL, 1 replica", pg_url, 1),
        ("PostgreSQL, 2 replicas", pg_url, 2),
    ]
    rows: list[list[str]] = []
    try:
        for name, storage, count in scenarios:
            if storage.startswith("postgresql"):
                reset_schema(pg_url)
            run = uuid.uuid4().hex[:6]
            holders = start_replicas(config, storage, count, with_token=False)
            try:
                result = ingest(holders, total_requests, run)
            finally:
                for replica in holders:
                    replica.stop()
            ok = result.statuses.get(202, 0)
            target = accepted(graph_url) + ok * PER_REQUEST
            seconds = drain(config, storage, count, graph_url, target)
            rows.append([
                name,
                f"{result.rate * PER_REQUEST:,.0f}",
                f"{result.percentile(50) * 1000:.0f}",
                f"{result.percentile(99) * 1000:.0f}",
                f"{ok}/{result.requests}",
                f"{ok * PER_REQUEST / seconds:,.0f}",
            ])  # fmt: skip
            print(f"  done: {name}", file=sys.stderr)
        print_table(
            "Batched ingest (100 events/request, 16 connections) and delivery drain",
            ["storage", "ingest events/s", "p50 ms", "p99 ms", "202s", "drain events/s"],
            rows,
        )
        from capirelay.outbox.postgres.migrate import migrate_url

        cost_events = min(events, 50_000)
        # synchronous_commit=off (this session only) separates the statements' own cost
        # from the WAL flush each durable COMMIT waits for.
        no_flush = f"{pg_url}?options=-csynchronous_commit%3Doff"
        for title, url in (
            ("durable COMMIT, as deployed", pg_url),
            ("synchronous_commit=off: the statements alone", no_flush),
        ):
            reset_schema(pg_url)
            asyncio.run(migrate_url(pg_url))
            print_table(
                f"PostgreSQL outbox statements, one client ({title})",
                ["statement", "µs per event", "rate"],
                asyncio.run(statement_costs(url, cost_events)),
            )
    finally:
        drop_database(db_name)
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(10)


if __name__ == "__main__":
    main()
