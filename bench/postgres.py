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
3. (PostgreSQL only) per-event database cost of the outbox statements from one
   client: enqueue of order events (100-event requests: ledger + dedup + queue),
   lease + ack with receipts (500-event batches); client wall time per statement
   and the CPU time of the database backend serving it (/proc, see _pgcpu.py).
   Steady state: the connection first runs each statement a dozen times (prepared,
   its plan settled), outside the measurement.  Three runs on a fresh schema each
   (``--cost-runs``); the line below is their median, each run's figure printed too.
   Before each run, a yardstick: a plain 100-row insert's backend CPU per row on the
   same database, so a figure can be told apart from the machine it ran on (the
   per-event cost divided by it is printed too).
4. replica scaling: a backlog (50,000 events with --quick) filled through one
   token-less replica, drained by 1 or 2 replicas started behind a hold on the
   pixel, alternating (1, 2, then 2, 1, ...), at least 5 runs each; the medians,
   and the database CPU per event of the draining replicas' backends.

The last two lines are meant to be compared from run to run:
    database CPU per delivered event: N us (client wall N us)
    replica scaling, median of K alternating runs: 1 replica N ev/s, 2 replicas N ev/s
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
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
    echo_unexpected,
    free_port,
    gateway_log,
    print_table,
    purchase_event,
    start_emulator,
    stop_process,
    wait_http,
)
from _common import events_requests as _events_requests
from _loadgen import LoadResult, run_load
from _pgcpu import BackendCpu, backend_pid, process_run_seconds

PER_REQUEST = 100
CONNECTIONS = 16
POSTGRES_SERVER = os.environ.get("CAPIRELAY_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1/test")
CAPIRELAY = str(Path(sys.executable).with_name("capirelay"))


def raw_event(i: int, now: int, run: str) -> dict[str, Any]:
    return purchase_event(f"{run}-{i}", i, now, value=10.0 + i % 90, fbp=False)


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
# The emulator shares the cores with the replicas and the database: on a busy machine it
# took over the default 1.5 s for a 1,000-event batch, and the timeouts' re-sends then
# counted in the drain (docs/postgres.md, "Seventh step").  The drain measures storage.
request_timeout = 10.0
"""
    )
    return config


class Replica:
    """``capirelay serve`` as a subprocess, storage from ``CAPIRELAY_STORAGE``."""

    def __init__(self, config: Path, storage: str, *, with_token: bool, wait: bool = True) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPIRELAY_")}
        env.update(CAPIRELAY_STORAGE=storage, BENCH_INGEST_KEY=KEY)
        if with_token:
            env["BENCH_ACCESS_TOKEN"] = TOKEN
        self.port = free_port()
        # Without a token (events kept queued) its log says so by design; the rest of
        # what it logs is repeated by stop().
        self.log = None if with_token else gateway_log(config.parent, f"replica-{self.port}")
        errors = self.log.open("ab") if self.log is not None else None
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
            stderr=errors,
        )
        if errors is not None:
            errors.close()
        if wait:
            wait_http(f"http://{HOST}:{self.port}/readyz", interval=0.05)

    def stop(self) -> None:
        stop_process(self.proc)
        if self.log is not None:
            echo_unexpected(self.log)


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


def order_batches(events: int, now: float, run: str) -> list[list[Any]]:
    """``events`` order events of one pixel in requests of PER_REQUEST (as NewEvents),
    each with an order id and its ledger key: the writes a purchase costs."""
    from capirelay.orders import order_key
    from capirelay.outbox import NewEvent

    batches = []
    for b in range(events // PER_REQUEST):
        batch = []
        for i in range(PER_REQUEST):
            raw = raw_event(b * PER_REQUEST + i, int(now), run)
            raw["custom_data"]["order_id"] = f"order-{run}-{b}-{i}"
            key = order_key(PIXEL, raw, test_event_code=None)
            batch.append(
                NewEvent(
                    PIXEL,
                    "Purchase",
                    f"{run}-{b}-{i}",
                    orjson.dumps(raw),
                    int(now),
                    now + 86400,
                    source="api",
                    order_key=key,
                )
            )
        batches.append(batch)
    return batches


async def statement_costs(
    storage: str, events: int, *, admin_url: str
) -> tuple[list[list[str]], float, float]:
    """Per-event cost of enqueue / lease / ack from one client, as the gateway calls them.

    Every event is an order event (an order-ledger row at enqueue) and is acked with
    Meta's answer (a receipt row in the ack's transaction): the writes a delivered
    purchase costs.  Returns the table rows, the database backend's CPU seconds per
    event (from /proc, see _pgcpu) and the client's wall seconds per event.
    """
    from capirelay.outbox.postgres import PostgresOutbox
    from capirelay.outbox.receipts import MetaAnswer

    app_name = f"capirelay-bench-cost-{uuid.uuid4().hex[:6]}"
    outbox = PostgresOutbox(_with_app(storage, app_name), pool_size=1, listen=False)
    await outbox.open()
    now = time.time()
    # Steady state, as a gateway's long-lived connections run: before the measured run,
    # the connection sends each statement often enough that psycopg has prepared it and
    # PostgreSQL has settled on its plan (psycopg prepares on the 5th execution, the
    # server re-plans the first 5 executions of a prepared statement).  Without this the
    # first dozen executions' parsing and planning, a fixed cost, were divided by the
    # run's events: the figure depended on the run's length (docs/postgres.md, "Tenth
    # step").  These events are delivered like the others and left in the tables.
    for warm in order_batches(WARM_UP_CALLS * PER_REQUEST, now, "warm"):
        await outbox.enqueue(warm, now=now)
    while leased := await outbox.lease(PIXEL, limit=PER_REQUEST, lease_seconds=60, now=time.time()):
        answer = MetaAnswer(fbtrace_id="Fwarm", events_received=len(leased), sent_at=now)
        await outbox.ack_delivered(
            [e.id for e in leased], now=time.time(), lease_id=leased[0].lease_id, answer=answer
        )
    batches = order_batches(events, now, "cost")
    cpu = BackendCpu(admin_url, app_name).start()
    # The pool's one backend, read between calls for the per-phase split (ns resolution).
    pid = backend_pid(admin_url, app_name)

    def run_s() -> float:
        return (process_run_seconds(pid) or 0.0) if pid is not None else 0.0

    phase_cpu = {"enqueue": 0.0, "lease": 0.0, "ack": 0.0}
    wal_start = _wal_lsn(admin_url)
    try:
        started, c0 = time.perf_counter(), run_s()
        for batch in batches:
            await outbox.enqueue(batch, now=now)
        enqueue_s = time.perf_counter() - started
        phase_cpu["enqueue"] = run_s() - c0
        backlog_bytes = _relation_bytes(admin_url, "capirelay_queue")
        lease_s = ack_s = 0.0
        leased_total = 0
        while True:
            t0, c0 = time.perf_counter(), run_s()
            leased = await outbox.lease(PIXEL, limit=500, lease_seconds=60, now=time.time())
            t1, c1 = time.perf_counter(), run_s()
            if not leased:
                break
            answer = MetaAnswer(fbtrace_id="Fbench", events_received=len(leased), sent_at=now)
            await outbox.ack_delivered(
                [e.id for e in leased], now=time.time(), lease_id=leased[0].lease_id, answer=answer
            )
            lease_s += t1 - t0
            ack_s += time.perf_counter() - t1
            phase_cpu["lease"] += c1 - c0
            phase_cpu["ack"] += run_s() - c1
            leased_total += len(leased)
        # Before migration 0011 the receipt batches' GIN index took new event ids into a
        # pending list, merged later (an insert past gin_pending_list_limit, or vacuum):
        # merge whatever is pending now, on a backend of its own, and count its CPU with
        # the ack phase's (nothing is pending since 0011: the ids go straight in).
        cpu_s = cpu.stop()
        merge_s = _merge_gin_pending(storage, f"{app_name}-gin")
        phase_cpu["ack"] += merge_s
        cpu_s += merge_s
        wal_bytes = _wal_bytes_since(admin_url, wal_start)
    finally:
        await outbox.close()
    n = len(batches) * PER_REQUEST
    # The tables that keep what was delivered hold the warm-up's events too.
    kept = n + WARM_UP_CALLS * PER_REQUEST
    STORAGE.update(
        backlog=backlog_bytes / n,
        dedup=_relation_bytes(admin_url, "capirelay_dedup") / kept,
        ledger=_relation_bytes(admin_url, "capirelay_order_ledger") / kept,
        receipts=(
            _relation_bytes(admin_url, "capirelay_receipts")
            + _relation_bytes(admin_url, "capirelay_receipt_batches")
        )
        / kept,
        wal=wal_bytes / n,
    )
    if leased_total != n:
        raise RuntimeError(f"delivered {leased_total} of {n} events")
    wall = enqueue_s / n + (lease_s + ack_s) / leased_total
    rows = [
        _cost_row(
            "enqueue (ledger + dedup + insert + NOTIFY), 100/call",
            enqueue_s,
            n,
            100,
            phase_cpu["enqueue"],
        ),
        _cost_row(
            "lease (promote + lease row), 500 events/call",
            lease_s,
            leased_total,
            500,
            phase_cpu["lease"],
        ),
        _cost_row(
            "ack + receipts (ack_delivered), 500 events/call",
            ack_s,
            leased_total,
            500,
            phase_cpu["ack"],
        ),
        ["total per delivered event (client wall)", f"{wall * 1e6:.1f}", "", ""],
        ["database backend CPU per delivered event", "", f"{cpu_s / n * 1e6:.1f}", ""],
    ]
    return rows, cpu_s / n, wall


# The columns of statement_costs' table.
COST_COLUMNS = ["statement", "client wall µs/event", "backend CPU µs/event", "rate"]

# Calls of each statement statement_costs makes before it measures (see there).
WARM_UP_CALLS = 12

# Bytes per event of the last statement_costs run (table + indexes + TOAST, and WAL).
STORAGE: dict[str, float] = {}


def _relation_bytes(url: str, table: str) -> int:
    """Table + indexes + TOAST; 0 for a table this schema does not have."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(pg_total_relation_size(to_regclass(%s)), 0)", (table,)
        ).fetchone()
    return int(row[0]) if row else 0


def _wal_lsn(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return str(row[0]) if row else "0/0"


def _wal_bytes_since(url: str, start: str) -> int:
    # WAL written by the whole server meanwhile (other databases' work counts too).
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (start,))
        value = row.fetchone()
    return int(value[0]) if value else 0


def _with_app(url: str, app_name: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={app_name}"


def _cost_row(
    name: str, seconds: float, events: int, per_call: int, cpu_seconds: float
) -> list[str]:
    return [
        name,
        f"{seconds / events * 1e6:.1f}",
        f"{cpu_seconds / events * 1e6:.1f}",
        f"{events / per_call / seconds:,.0f} calls/s",
    ]


def _merge_gin_pending(storage: str, app_name: str) -> float:
    """Merge the receipt batches' pending GIN entries on a backend named ``app_name``;
    the CPU seconds that backend spent doing it (0 on a schema without the index)."""
    with psycopg.connect(_with_app(storage, app_name), autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        pid = int(row[0]) if row else 0
        before = process_run_seconds(pid) or 0.0
        exists = conn.execute(
            "SELECT to_regclass('capirelay_receipt_batches_by_event_id') IS NOT NULL"
        ).fetchone()
        if exists and exists[0]:
            conn.execute("SELECT gin_clean_pending_list('capirelay_receipt_batches_by_event_id')")
        return (process_run_seconds(pid) or 0.0) - before


# ------------------------------------------------------------------ replica scaling


def scaling_events(quick: bool) -> int:
    """Backlog per scaling run: a drain of 20,000 events lasts about a second here, too
    short to tell 1 replica from 2 (one scheduling hiccup is 5 %); 50,000 even in --quick."""
    return 50_000 if quick else 100_000


def hold_delivery(conn: psycopg.Connection[Any]) -> None:
    """Hold the bench pixel (a row of capirelay_pixel_state, as a throttle writes it):
    replicas started now lease nothing of it until :func:`release_delivery`."""
    conn.execute(
        "INSERT INTO capirelay_pixel_state"
        " (pixel_id, hold_until, hold_seconds, reason, updated_at)"
        " VALUES (%s, %s, 3600, 'throttle', %s)",
        (PIXEL, time.time() + 3600, time.time()),
    )


def release_delivery(conn: psycopg.Connection[Any]) -> float:
    """Lift the hold and announce the pixel (NOTIFY, as an enqueue does); the
    ``time.perf_counter()`` of the moment it was lifted."""
    from capirelay.outbox.postgres._statements import CHANNEL

    conn.execute("DELETE FROM capirelay_pixel_state WHERE pixel_id = %s", (PIXEL,))
    released = time.perf_counter()
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, PIXEL))
    return released


def fill_backlog(
    config: Path, storage: str, graph_url: str, events: int, run: str
) -> tuple[int, int]:
    """Queue ``events`` through one token-less replica (stopped after); the events
    queued, and the emulator's accepted count that means all of them were delivered."""
    holders = start_replicas(config, storage, 1, with_token=False)
    try:
        result = ingest(holders, events // PER_REQUEST, run)
    finally:
        for replica in holders:
            replica.stop()
    delivered = result.statuses.get(202, 0) * PER_REQUEST
    return delivered, accepted(graph_url) + delivered


def drain_rate(
    config: Path, storage: str, count: int, graph_url: str, events: int
) -> tuple[float, float]:
    """Fill a backlog through one token-less replica, then drain it with ``count`` replicas;
    events/s and the database's CPU seconds per delivered event during the drain.

    The draining replicas start behind a hold on the pixel (a row of
    capirelay_pixel_state, as a throttle writes it), so none of them sends before all of
    them are up: a process starting burns about a second of CPU, and on a 2-core machine
    the second replica's start-up would otherwise be paid inside the 2-replica drain.
    The bench then lifts the hold and announces the pixel (NOTIFY, as an enqueue does);
    events/s from that moment to the last event Meta (the emulator) accepts.  The
    database CPU is that of every backend the draining replicas opened (their
    connections carry an application_name of their own): leases, acks, receipts, the
    due-pixel polls and the gauges, as deployed.
    """
    run = uuid.uuid4().hex[:6]
    delivered, target = fill_backlog(config, storage, graph_url, events, run)
    app_name = f"capirelay-bench-drain-{run}"
    with psycopg.connect(storage, autocommit=True) as conn:
        hold_delivery(conn)
        procs = start_replicas(config, _with_app(storage, app_name), count, with_token=True)
        cpu = BackendCpu(storage, app_name).start()
        try:
            released = release_delivery(conn)
            deadline = released + 600
            while accepted(graph_url) < target:
                if time.perf_counter() > deadline:
                    raise RuntimeError("drain did not finish in 10 minutes")
                time.sleep(0.01)
            seconds = time.perf_counter() - released
            return delivered / seconds, cpu.stop() / max(delivered, 1)
        finally:
            cpu.stop()
            for replica in procs:
                replica.stop()


def replica_scaling(
    config: Path, pg_url: str, graph_url: str, *, runs: int, events: int
) -> tuple[float, float, float, float]:
    """Median drain rate of 1 and of 2 replicas, over ``runs`` runs each, alternating (each
    count first in every other pair); and the median database CPU seconds per delivered
    event of each."""
    rates: dict[int, list[float]] = {1: [], 2: []}
    db_cpu: dict[int, list[float]] = {1: [], 2: []}
    for n in range(runs):
        # 1, 2, then 2, 1, ...: a machine that speeds up or slows down during the runs
        # (this shared host does, by a quarter within minutes) favours neither count.
        for count in (1, 2) if n % 2 == 0 else (2, 1):
            reset_schema(pg_url)
            rate, cpu = drain_rate(config, pg_url, count, graph_url, events)
            rates[count].append(rate)
            db_cpu[count].append(cpu)
            print(f"  scaling run {n + 1}: {count} replica(s) {rate:,.0f} ev/s, "
                  f"database {cpu * 1e6:.1f} us/event", file=sys.stderr)  # fmt: skip
    return (
        statistics.median(rates[1]),
        statistics.median(rates[2]),
        statistics.median(db_cpu[1]),
        statistics.median(db_cpu[2]),
    )


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


def migrated_schema(url: str) -> None:
    """A fresh public schema with capirelay's tables, as the statement loops start from."""
    from capirelay.outbox.postgres.migrate import migrate_url

    reset_schema(url)
    asyncio.run(migrate_url(url))


YARDSTICK_ROWS = 30_000


def yardstick_cost(url: str, rows: int = YARDSTICK_ROWS) -> float:
    """Backend CPU seconds per row of a plain insert, measured on this database now: 100
    rows a statement (bigint key in order, 100-character text) into a table with only a
    primary key, each statement its own durable commit, binary array parameters.

    Not capirelay's work: a fixed piece of PostgreSQL work to divide the outbox's figure
    by.  The per-event figure moves with the machine (the same code read 24 us on one
    session's machine and 40 on the next's); measured in the same minutes, the ratio to
    this yardstick tells a slower machine from a costlier change."""
    payload = "y" * 100
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS capirelay_bench_yardstick")
        conn.execute(
            "CREATE TABLE capirelay_bench_yardstick (id bigint PRIMARY KEY, payload text NOT NULL)"
        )
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        statement = (
            "INSERT INTO capirelay_bench_yardstick (id, payload) "
            "SELECT * FROM unnest(%(ids)b::bigint[], %(payloads)b::text[])"
        )

        def insert(start: int) -> None:
            ids = list(range(start, start + PER_REQUEST))
            conn.execute(statement, {"ids": ids, "payloads": [payload] * PER_REQUEST})

        next_id = 0
        for _ in range(WARM_UP_CALLS):  # prepared, plan settled, as in statement_costs
            insert(next_id)
            next_id += PER_REQUEST
        before = process_run_seconds(pid[0]) or 0.0
        for _ in range(rows // PER_REQUEST):
            insert(next_id)
            next_id += PER_REQUEST
        spent = (process_run_seconds(pid[0]) or 0.0) - before
        conn.execute("DROP TABLE capirelay_bench_yardstick")
    return spent / (rows // PER_REQUEST * PER_REQUEST)


def durable_costs(pg_url: str, events: int, runs: int) -> tuple[float, float]:
    """The statement loop ``runs`` times on a fresh schema, durable COMMITs as deployed:
    every run's figure, the median run's tables, and the median database CPU seconds and
    client wall seconds per delivered event.  One run's figure moves by about 2 µs with
    the machine's minute (docs/postgres.md); the median of several is what to compare."""
    results = []
    yardsticks = []
    for _ in range(runs):
        migrated_schema(pg_url)
        yardsticks.append(yardstick_cost(pg_url))
        rows, cpu, wall = asyncio.run(statement_costs(pg_url, events, admin_url=pg_url))
        results.append((cpu, wall, rows, dict(STORAGE)))
    ordered = sorted(results, key=lambda result: result[0])
    _, _, rows, storage = ordered[len(ordered) // 2]
    print_table(
        f"PostgreSQL outbox statements, one client (durable COMMIT, as deployed; "
        f"the median of {runs} runs)",
        COST_COLUMNS,
        rows,
    )
    print_table(
        "PostgreSQL bytes per event (that run; WAL: the whole server's)",
        ["what", "bytes per event"],
        [[k, f"{v:,.0f}"] for k, v in storage.items()],
    )
    print(
        "database CPU per delivered event, each run: "
        + ", ".join(f"{cpu * 1e6:.1f}" for cpu, _, _, _ in results)
        + " us"
    )
    yardstick = statistics.median(yardsticks)
    per_event = statistics.median(cpu for cpu, _, _, _ in results)
    print(
        "yardstick, a plain 100-row insert on this database before each run: "
        + ", ".join(f"{y * 1e6:.2f}" for y in yardsticks)
        + f" us per row; a delivered event costs {per_event / yardstick:.1f} such rows"
    )
    return (
        statistics.median(cpu for cpu, _, _, _ in results),
        statistics.median(wall for _, wall, _, _ in results),
    )


def scaling_lines(config: Path, pg_url: str, graph_url: str, args: argparse.Namespace) -> None:
    runs = max(5, args.runs)
    one, two, one_cpu, two_cpu = replica_scaling(
        config, pg_url, graph_url, runs=runs, events=scaling_events(args.quick)
    )
    print(
        f"replica scaling, median of {runs} alternating runs: "
        f"1 replica {one:,.0f} ev/s, 2 replicas {two:,.0f} ev/s"
    )
    print(
        f"database CPU per event while draining, median: "
        f"1 replica {one_cpu * 1e6:.1f} us, 2 replicas {two_cpu * 1e6:.1f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events per scenario")
    parser.add_argument(
        "--runs", type=int, default=5, help="drains per replica count (at least 5), alternating"
    )
    parser.add_argument(
        "--cost-runs",
        type=int,
        default=3,
        help="statement loops (durable) whose median is the database CPU line",
    )
    parser.add_argument(
        "--scaling-only",
        action="store_true",
        help="only the replica scaling runs (their two lines), e.g. to alternate code versions",
    )
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
        if args.scaling_only:
            scaling_lines(config, pg_url, graph_url, args)
            return
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
        cost_events = min(events, 50_000)
        cost, wall = durable_costs(pg_url, cost_events, args.cost_runs)
        # synchronous_commit=off (this session only) separates the statements' own cost
        # from the WAL flush each durable COMMIT waits for.
        no_flush = f"{pg_url}?options=-csynchronous_commit%3Doff"
        migrated_schema(pg_url)
        no_flush_rows, _, _ = asyncio.run(statement_costs(no_flush, cost_events, admin_url=pg_url))
        print_table(
            "PostgreSQL outbox statements, one client "
            "(synchronous_commit=off: the statements alone)",
            COST_COLUMNS,
            no_flush_rows,
        )
        print()
        print(
            f"database CPU per delivered event: {cost * 1e6:.1f} us "
            f"(client wall {wall * 1e6:.1f} us)"
        )
        scaling_lines(config, pg_url, graph_url, args)
    finally:
        drop_database(db_name)
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(10)


if __name__ == "__main__":
    main()
