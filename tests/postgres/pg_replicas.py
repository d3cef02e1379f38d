"""Gateway replicas as real processes (``capirelay serve``) on one PostgreSQL outbox.

Each replica is started exactly as ``examples/deploy`` runs it: the same
``capirelay serve --config ... --host ... --port ...`` command, the very settings
file of ``examples/deploy/capirelay.toml``, the storage URL in
``CAPIRELAY_STORAGE`` and the secrets in environment variables.  Only the Graph
API URL (the emulator) and the delivery timings are overridden, through the
environment as an operator would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from capirelay.outbox.postgres import PostgresOutbox
from gateway_traffic import free_port, kill_process, stop_process, wait_ready

PIXEL_ID = "1234567890"
ACCESS_TOKEN = "replica-test-token"
INGEST_KEY = "replica-test-ingest-key"
CAPIRELAY = str(Path(sys.executable).with_name("capirelay"))
DEPLOY_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "deploy" / "capirelay.toml"


def deployment_env(storage_url: str, graph_url: str, **delivery: Any) -> dict[str, str]:
    """What a replica's environment holds in examples/deploy, pointed at the test's
    database and emulator; ``delivery`` overrides [delivery] settings (test timings)."""
    # request_timeout: the emulator runs in the test process beside the load threads; on a
    # busy machine it answered a 500-event batch in over 1.5 s (the default), the replica
    # timed out and resent a batch Meta had taken (seen: 2,500-6,750 events sent twice,
    # none in a crash window).  8 s stays under lease_seconds, so a batch still in flight
    # is never leased again.
    values = {"batch_size": 500, "max_in_flight": 4, "linger_ms": 20, "lease_seconds": 10,
              "poll_seconds": 0.2, "request_timeout": 8, **delivery}  # fmt: skip
    env = {
        "CAPIRELAY_STORAGE": storage_url,
        "CAPIRELAY_GRAPH_URL": graph_url,
        "META_ACCESS_TOKEN": ACCESS_TOKEN,
        "INGEST_KEY": INGEST_KEY,
    }
    env.update({f"CAPIRELAY_DELIVERY__{k.upper()}": str(v) for k, v in values.items()})
    return env


class Replica:
    """One ``capirelay serve`` process on a loopback port."""

    def __init__(self, name: str, settings_env: dict[str, str], workdir: Path) -> None:
        self.name, self.settings_env, self.workdir = name, settings_env, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPIRELAY_")}
        env.update(self.settings_env)
        # Three replicas share this test machine's cores: one process each, as before
        # `serve` started one worker per core (what --workers adds is tests/server/test_workers).
        env["CAPIRELAY_WORKERS"] = "1"
        # The command of examples/deploy (Dockerfile CMD), on a loopback port.
        command = [CAPIRELAY, "serve", "--config", str(DEPLOY_CONFIG), "--host", "127.0.0.1",
                   "--port", str(self.port), "--log-level", "warning"]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.process is not None
        wait_ready(self.process, self.url, self.log_path, self.name, timeout)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        kill_process(self.process)

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL if it hangs); the exit code, None if never started."""
        return stop_process(self.process)


@contextmanager
def replicas(count: int, settings_env: dict[str, str], workdir: Path) -> Iterator[list[Replica]]:
    """Start ``count`` replicas together (they migrate concurrently) and stop them after."""
    started = [Replica(f"replica-{n}", settings_env, workdir) for n in range(count)]
    try:
        for replica in started:
            replica.start()
        for replica in started:
            replica.wait_ready()
        yield started
    finally:
        for replica in started:
            replica.stop()


def queue_depth(storage_url: str) -> int:
    with psycopg.connect(storage_url) as conn:
        row = conn.execute("SELECT count(*) FROM capirelay_queue").fetchone()
    return int(row[0]) if row else 0


_GIVEN_UP = re.compile(r"(\d+) events? not delivered in \d+ ms: .*timeout before the lease ends")


def events_given_up_at_lease_end(log_path: Path) -> int:
    """Events in the batches a replica's log says it stopped waiting for at its lease's end
    (Meta may have read them; the next lease sends them again)."""
    text = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
    return sum(int(match[1]) for match in _GIVEN_UP.finditer(text))


def leased_event_ids(storage_url: str) -> set[str]:
    """Event ids of the queue rows a lease holds right now (migration 0010: leases)."""
    with psycopg.connect(storage_url) as conn:
        rows = conn.execute(
            "SELECT event_id FROM capirelay_queue WHERE id IN "
            "(SELECT unnest(ids) FROM capirelay_leases)"
        ).fetchall()
    return {row[0] for row in rows}


def dedup_keys(storage_url: str) -> int:
    with psycopg.connect(storage_url) as conn:
        row = conn.execute("SELECT count(*) FROM capirelay_dedup").fetchone()
    return int(row[0]) if row else 0


def purchase(event_id: str, email: str) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": int(time.time()),
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "user_data": {
            "email": email,
            "client_user_agent": "Mozilla/5.0 (replica test)",
            "client_ip_address": "8.8.4.4",
        },
        "custom_data": {"value": 10, "currency": "EUR"},
    }


# What the ``open_replica`` fixture (conftest.py) gives: open one more outbox replica.
OpenReplica = Callable[..., Awaitable[PostgresOutbox]]


def hold_dedup_key(url: str, event_id: str, seen_at: float) -> psycopg.Connection[Any]:
    """A connection whose open transaction has inserted the dedup key (``event_id``,
    Purchase, pixel 111) and not committed: an enqueue of that key waits for it.  The
    caller commits, rolls back or closes it."""
    conn = psycopg.connect(url)
    try:
        conn.execute(
            "INSERT INTO capirelay_dedup (event_id, event_name, pixel_id, seen_at)"
            " VALUES (%s, 'Purchase', '111', %s)",
            (event_id, seen_at),
        )
    except BaseException:
        conn.close()
        raise
    return conn


def one_backend_waits_on_a_lock(url: str) -> Callable[[], bool]:
    """A condition for ``wait_for``: exactly one backend of ``url``'s database is waiting
    on a lock (another transaction's uncommitted row, say)."""

    def waiting() -> bool:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()
        return row is not None and row[0] == 1

    return waiting


def table_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows in every table of the connection's schema but the migrations' bookkeeping."""
    names = [
        r[0]
        for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " AND tablename <> 'capirelay_migrations'"
        )
    ]
    return {n: conn.execute(f"SELECT count(*) FROM {n}").fetchone()[0] for n in names}  # type: ignore[index]
