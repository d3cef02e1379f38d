"""``capirelay serve --workers 2``: several gateway processes on one port, on both backends.

The gateway runs as a real supervisor with two real worker processes.  It has no access
token, so every acknowledged event must stay in the queue, where the tests read it back
straight from the database:

* dedup is exact across the workers: one event id sent on many fresh connections at
  once (the kernel spreads connections over the workers) is queued once, and every
  other answer is ``duplicate``; the metrics, summed over the workers, say the same;
* a 202 means committed: SIGKILL of the supervisor mid-traffic (its workers die with
  it) loses no event that was answered ``queued``;
* SIGTERM stops every worker gracefully, and ``/readyz`` answers before that.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from capirelay.emulator.testing import run_emulator
from gateway_traffic import free_port, stop_process, wait_ready
from waiting import wait_for

PIXEL_ID = "1234567890"
INGEST_KEY = "workers-test-ingest-key"
ACCESS_TOKEN = "workers-test-token"
WORKERS = 2


def _config(directory: Path, storage: str, graph_url: str, header_timeout: float | None) -> Path:
    token = 'access_token = { env = "WORKERS_TEST_TOKEN" }' if graph_url else ""
    # Only the slow-client test shortens the header timeout: elsewhere the product's
    # default, since a sender thread of this (CPU-starved) test process may well take
    # longer than a second between its connect and its request's head.
    timeout = f"header_timeout_seconds = {header_timeout}" if header_timeout else ""
    config = directory / "capirelay.toml"
    config.write_text(
        f"""
storage = "{storage}"
graph_url = "{graph_url or "http://127.0.0.1:9"}"
{timeout}
[pixels.{PIXEL_ID}]
default_country = "US"
{token}
[ingest_keys.backend]
key = {{ env = "WORKERS_TEST_INGEST_KEY" }}
[delivery]
poll_seconds = 0.2
linger_ms = 20
request_timeout = 30
""",
        encoding="utf-8",
    )
    return config


class Gateway:
    def __init__(
        self,
        directory: Path,
        storage: str,
        graph_url: str = "",
        log_level: str = "warning",
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
        header_timeout: float | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.storage = storage
        self.log_path = directory / "gateway.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAPIRELAY_")}
        env["WORKERS_TEST_INGEST_KEY"] = INGEST_KEY
        env["WORKERS_TEST_TOKEN"] = ACCESS_TOKEN
        env.update(extra_env or {})
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "capirelay.server",
                    "--config",
                    str(_config(directory, storage, graph_url, header_timeout)),
                    "--port",
                    str(self.port),
                    "--workers",
                    str(WORKERS),
                    "--log-level",
                    log_level,
                    *extra_args,
                ],
                cwd=directory,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_ready(self.process, self.url, self.log_path, "gateway", 60)

    def workers(self) -> list[psutil.Process]:
        """The worker processes (uvicorn's spawn helper, if any, is not one)."""
        children = psutil.Process(self.process.pid).children()
        return [c for c in children if "resource_tracker" not in " ".join(c.cmdline())]

    def post(self, event: dict[str, Any]) -> httpx.Response:
        # A fresh connection per request, so requests spread over the workers.
        try:
            return httpx.post(
                f"{self.url}/v1/events",
                json={"pixel_id": PIXEL_ID, "data": [event]},
                headers={"Authorization": f"Bearer {INGEST_KEY}"},
                timeout=30,
            )
        except httpx.TransportError as exc:  # what the gateway said about it, in the report
            exc.add_note(
                "the gateway's log ends:\n" + self.log_path.read_text("utf-8", "replace")[-4000:]
            )
            raise


def _event(event_id: str) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 2,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/checkout",
        "user_data": {
            "email": f"{event_id}@example.com",
            "client_ip_address": "203.0.113.9",
            "client_user_agent": "Mozilla/5.0 (X11; Linux x86_64) workers-test",
        },
        "custom_data": {"value": 19.5, "currency": "EUR"},
    }


def _queued_ids(storage: str) -> list[str]:
    """Event ids in the queue table, read straight from the database."""
    if storage.startswith("sqlite:///"):
        with sqlite3.connect(storage.removeprefix("sqlite:///")) as conn:
            return [row[0] for row in conn.execute("SELECT event_id FROM queue")]
    with psycopg.connect(storage) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM capirelay_queue")]


def _metric_total(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


@pytest.fixture
def storage(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend == "postgres":
        with request.getfixturevalue("pg_schema")() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'workers.db'}"


@pytest.fixture
def gateway(storage: str, tmp_path: Path) -> Iterator[Gateway]:
    running = Gateway(tmp_path, storage)
    try:
        yield running
    finally:
        stop_process(running.process)


def test_dedup_is_exact_across_workers_and_metrics_add_up(gateway: Gateway) -> None:
    assert len(gateway.workers()) == WORKERS
    assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200

    event = _event(f"same-{uuid.uuid4().hex[:8]}")
    senders = 24
    with ThreadPoolExecutor(senders) as pool:
        answers = list(pool.map(lambda _: gateway.post(event), range(senders)))
    assert [a.status_code for a in answers] == [202] * senders
    statuses = sorted(a.json()["results"][0]["status"] for a in answers)
    assert statuses == ["duplicate"] * (senders - 1) + ["queued"]

    unique = [f"u-{uuid.uuid4().hex[:8]}-{i}" for i in range(60)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: gateway.post(_event(i)), unique))
    assert {a.json()["results"][0]["status"] for a in answers} == {"queued"}

    queued = _queued_ids(gateway.storage)
    assert sorted(queued) == sorted([event["event_id"], *unique])
    # Any worker's /metrics answers for all of them.  The queue depth gauge may be up to
    # 5 s old on PostgreSQL (the replicas share one count of the queue, docs/postgres.md).
    wait_for(
        lambda: _metric_total(gateway.url, "capirelay_queue_depth") == 61,
        timeout=30,
        what="the queue depth gauge counts the 61 queued events",
    )
    for _ in range(4):
        assert _metric_total(gateway.url, "capirelay_events_accepted_total") == 61
        assert _metric_total(gateway.url, "capirelay_events_duplicate_total") == senders - 1
        assert _metric_total(gateway.url, "capirelay_queue_depth") == 61


def test_sigkill_of_the_supervisor_loses_nothing_acknowledged(gateway: Gateway) -> None:
    workers = gateway.workers()
    assert len(workers) == WORKERS
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def send(thread_no: int) -> None:
        n = 0
        while not stop.is_set():
            event_id = f"k-{thread_no}-{n}"
            n += 1
            try:
                answer = gateway.post(_event(event_id))
            except httpx.TransportError:
                continue  # the gateway died under this request: not acknowledged
            if answer.status_code == 202:
                assert answer.json()["results"][0]["status"] == "queued"
                with lock:
                    acknowledged.append(event_id)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(acknowledged) >= 300, timeout=30, what="traffic flowing")
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(10)
        # The workers die with their supervisor (no orphan keeps the port or the file).
        _, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    queued = set(_queued_ids(gateway.storage))
    missing = [event_id for event_id in acknowledged if event_id not in queued]
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
    assert len(queued) >= len(acknowledged) >= 300


def test_sigterm_stops_every_worker_gracefully(gateway: Gateway) -> None:
    workers = gateway.workers()
    assert gateway.post(_event(f"t-{uuid.uuid4().hex[:8]}")).status_code == 202
    assert stop_process(gateway.process) == 0
    # The supervisor returns only after joining its workers (their exit codes are its
    # to read, not ours): none is left, and none failed on the way out.
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive
    assert "Traceback" not in gateway.log_path.read_text()


def test_each_request_gets_one_access_line_from_the_workers_at_the_default_level(
    tmp_path: Path,
) -> None:
    """uvicorn wrote an access line of its own (with the client's address and port)
    beside the gateway's whenever its access logger reached a handler, as it did in each
    worker: two lines per request at the default level."""
    running = Gateway(tmp_path, f"sqlite:///{tmp_path / 'outbox.db'}", log_level="info")
    try:
        for index in range(3):
            assert running.post(_event(f"a-{uuid.uuid4().hex[:8]}-{index}")).status_code == 202
    finally:
        assert stop_process(running.process) == 0
    lines = running.log_path.read_text().splitlines()
    assert sum(" capirelay.access POST /v1/events 202 " in line for line in lines) == 3
    assert not [line for line in lines if "uvicorn.access" in line]


def _pinned_cpu(process: psutil.Process) -> int | None:
    """The one CPU every thread of ``process`` is kept on, or None if they are not all
    kept on the same single CPU (or the process is gone)."""
    try:
        sets = {frozenset(os.sched_getaffinity(thread.id)) for thread in process.threads()}
    except (psutil.NoSuchProcess, ProcessLookupError):  # it (or a thread) ended meanwhile
        return None
    if len(sets) != 1:
        return None
    (cpus,) = sets
    return next(iter(cpus)) if len(cpus) == 1 else None


def test_cpu_affinity_auto_keeps_each_worker_and_its_replacement_on_a_cpu_of_its_own(
    tmp_path: Path,
) -> None:
    """``--cpu-affinity auto``: worker i, every thread of it (event loop, SQLite writer
    and sync, delivery), on the i-th CPU the gateway may use, round robin; a worker
    restarted after a crash gets its slot's CPU again; the supervisor is not pinned."""
    allowed = sorted(os.sched_getaffinity(0))
    expected = sorted(allowed[i % len(allowed)] for i in range(WORKERS))
    running = Gateway(
        tmp_path, f"sqlite:///{tmp_path / 'outbox.db'}", extra_args=("--cpu-affinity", "auto")
    )
    try:
        assert running.post(_event(f"pinned-{uuid.uuid4().hex[:8]}")).status_code == 202

        def pinned() -> list[int | None]:
            return sorted((_pinned_cpu(w) for w in running.workers()), key=str)

        every_thread_on_its_cpu: list[int | None] = sorted(expected, key=str)
        # The gateway answers once one worker listens; the other may still be starting
        # (all its threads on every CPU until it pins itself, before its own threads).
        wait_for(
            lambda: len(running.workers()) == WORKERS and pinned() == every_thread_on_its_cpu,
            what="each worker on its slot's CPU",
        )
        assert os.sched_getaffinity(running.process.pid) == set(allowed)
        victim = running.workers()[0]
        victim.kill()
        victim.wait(10)
        wait_for(
            lambda: (
                len(running.workers()) == WORKERS
                and victim.pid not in {w.pid for w in running.workers()}
                and pinned() == every_thread_on_its_cpu
            ),
            what="a replacement worker on its slot's CPU",
        )
        assert running.post(_event(f"pinned-after-{uuid.uuid4().hex[:8]}")).status_code == 202
        assert pinned() == every_thread_on_its_cpu
    finally:
        assert stop_process(running.process) == 0


def test_without_cpu_affinity_no_worker_is_pinned_whatever_the_environment_says(
    tmp_path: Path,
) -> None:
    """The supervisor's hand-over variable, inherited from outside, pins nothing when
    ``--cpu-affinity`` is off (the default)."""
    allowed = os.sched_getaffinity(0)
    running = Gateway(
        tmp_path,
        f"sqlite:///{tmp_path / 'outbox.db'}",
        extra_env={"CAPIRELAY_WORKER_CPU": str(min(allowed))},
    )
    try:
        assert running.post(_event(f"unpinned-{uuid.uuid4().hex[:8]}")).status_code == 202
        workers = running.workers()
        assert len(workers) == WORKERS
        for worker in workers:
            assert {frozenset(os.sched_getaffinity(t.id)) for t in worker.threads()} == {
                frozenset(allowed)
            }
    finally:
        assert stop_process(running.process) == 0


def test_a_worker_that_dies_is_restarted_and_the_log_says_so(gateway: Gateway) -> None:
    """The requests a dying worker was serving get no answer, so its restart is a
    warning in the log (visible at the default level), with how it ended."""
    victim = gateway.workers()[0]
    victim.kill()
    victim.wait(10)
    wait_for(
        lambda: (
            f"worker [{victim.pid}] exited (code -9); restarting it" in gateway.log_path.read_text()
        ),
        what="the restart warning",
    )
    wait_for(
        lambda: (
            len(gateway.workers()) == WORKERS
            and victim.pid not in {w.pid for w in gateway.workers()}
        ),
        what="a replacement worker",
    )
    assert gateway.post(_event(f"after-restart-{uuid.uuid4().hex[:8]}")).status_code == 202


def test_every_worker_delivers_and_each_event_reaches_meta_once(
    storage: str, tmp_path: Path
) -> None:
    """Each worker runs a delivery engine; leases in the database keep them apart."""
    with run_emulator(pixels={PIXEL_ID: ACCESS_TOKEN}) as emulator:
        gateway = Gateway(tmp_path, storage, emulator.url)
        try:
            ids = [f"d-{uuid.uuid4().hex[:8]}-{i}" for i in range(400)]
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda i: gateway.post(_event(i)), ids))
            assert {a.json()["results"][0]["status"] for a in answers} == {"queued"}
            wait_for(lambda: emulator.state.stats()["events_accepted"] >= len(ids), timeout=30)
            wait_for(lambda: not _queued_ids(storage), timeout=30, what="an empty queue")
            received = [e["event"]["event_id"] for e in emulator.state.events(PIXEL_ID)]
            assert sorted(received) == sorted(ids)
            assert _metric_total(gateway.url, "capirelay_events_sent_total") == len(ids)
        finally:
            stop_process(gateway.process)


def test_every_worker_closes_connections_whose_headers_never_complete(
    storage: str, tmp_path: Path
) -> None:
    """The header timeout reaches the worker processes too (their protocol comes by name)."""
    gateway = Gateway(tmp_path, storage, header_timeout=1)
    try:
        for _ in range(2 * WORKERS):  # fresh connections spread over the workers
            with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as conn:
                conn.sendall(b"GET /healthz HT")
                while conn.recv(4096):  # EOF: the server closed it (30 s guards a hang)
                    pass
        assert gateway.post(_event("after-slow-clients")).status_code == 202
    finally:
        stop_process(gateway.process)


def test_each_worker_listens_on_a_socket_of_its_own_and_gets_connections(
    gateway: Gateway,
) -> None:
    """SO_REUSEPORT, one listening socket per worker (server/workers.py WorkerSockets):
    the kernel spreads connections over the workers instead of the first to wake."""
    workers = gateway.workers()

    def listeners() -> dict[int, int]:
        """Per worker, the inode of its listening socket on the port (once all listen)."""
        found = {}
        for worker in workers:
            fds = [
                c.fd
                for c in worker.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == gateway.port
            ]
            assert len(fds) <= 1, fds  # one socket each, not several
            if fds:
                found[worker.pid] = os.stat(f"/proc/{worker.pid}/fd/{fds[0]}").st_ino
        return found if len(found) == WORKERS else {}

    listening = wait_for(listeners, what="every worker listening")
    assert len(set(listening.values())) == WORKERS  # not one socket shared

    # 64 connections held open: the kernel hashes each to one socket, so a worker left
    # without any has probability 2**-63.
    connections = [
        socket.create_connection(("127.0.0.1", gateway.port), timeout=30) for _ in range(64)
    ]
    try:

        def accepted() -> dict[int, int]:
            counts = {
                worker.pid: sum(
                    1
                    for c in worker.net_connections(kind="tcp")
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == gateway.port
                )
                for worker in workers
            }
            return counts if sum(counts.values()) == len(connections) else {}

        counts = wait_for(accepted, what="every connection accepted by a worker")
        assert all(counts[worker.pid] > 0 for worker in workers), counts
    finally:
        for conn in connections:
            conn.close()
    assert gateway.post(_event(f"after-{uuid.uuid4().hex[:8]}")).status_code == 202


def test_a_port_already_listened_on_is_refused_not_shared() -> None:
    from capirelay.server.workers import bind_worker_sockets

    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even a sharing one
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        with pytest.raises(OSError):
            bind_worker_sockets("127.0.0.1", other.getsockname()[1], 2)
    sockets = bind_worker_sockets("127.0.0.1", 0, 3)  # port 0: one port picked for all
    try:
        assert len({s.getsockname()[1] for s in sockets}) == 1
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in sockets)
    finally:
        for sock in sockets:
            sock.close()


def test_connections_spread_over_the_worker_sockets_before_any_worker_runs() -> None:
    """The sockets listen from the supervisor on: connections made while the workers are
    still starting are hashed over every worker's socket and wait in its backlog.  (When
    each worker's server called ``listen``, the first worker up got all of them.)"""
    from capirelay.server.workers import bind_worker_sockets

    sockets = bind_worker_sockets("127.0.0.1", 0, 2)
    port = sockets[0].getsockname()[1]
    clients: list[socket.socket] = []
    try:
        assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for s in sockets)
        # Nobody accepts yet: the kernel completes each handshake into one socket's
        # backlog.  64 connections leave a socket without any with probability 2**-63.
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(64)]
        waiting = [0] * len(sockets)
        for sock in sockets:
            sock.setblocking(False)

        def all_accepted() -> bool:
            for index, sock in enumerate(sockets):
                while True:
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        break
                    conn.close()
                    waiting[index] += 1
            return sum(waiting) == len(clients)

        wait_for(all_accepted, what="every connection in a worker socket's backlog")
        assert all(count > 0 for count in waiting), waiting
    finally:
        for client in clients:
            client.close()
        for sock in sockets:
            sock.close()
