"""``capirelay serve --workers N``: N gateway processes on one port, a socket each.

Why this shape (measured, see docs/benchmarks.md "Ingest under wrk"): one gateway
process saturates one core in per-request Python work (HTTP parsing, Starlette, prepare,
the hand-off to the writer thread) long before its durable commits do; an fsync is a
fraction of a millisecond and one group commit carries every request that waited for it.
So the way to use every core is more processes doing that per-request work, each a full
gateway (the same app as ``--workers 1``):

* **Durability and dedup are the database's, exactly as with replicas.**  Each worker
  has its own outbox and group-commit writer and answers 202 only after its commit.  On
  SQLite every write transaction is ``BEGIN IMMEDIATE``, which takes the file's single
  writer lock, so the workers' group commits take turns (one writer at a time, each
  commit still carrying all of its process's waiting requests) and the dedup claim
  (an upsert on the dedup key) is decided under that lock: exact across processes.
  ``synchronous`` is unchanged.  On PostgreSQL each worker has its own pool, as
  replicas do.
* **Delivery** runs in every worker, as on replicas: leases are stamped in the
  database, so a row is sent by one worker at a time, and each worker wakes its own
  engine for the events it queued.
* **Metrics** are the sum over workers: ``prometheus_client``'s multiprocess mode, in a
  private directory this supervisor creates (and removes), so any worker's
  ``/metrics`` answers for all of them.  Gauges refreshed from storage on a scrape take
  the most recent value; per-worker engine gauges are summed or maxed (see metrics.py).
* **Connections**: each worker accepts from a listening socket of its own, all bound to
  the port with ``SO_REUSEPORT`` (:class:`WorkerSockets`), so the kernel spreads
  connections evenly; on uvicorn's one shared socket the first loop to wake took most
  of them (two workers measured 90 % / 23 % busy).  A port something else already
  listens on is still refused (:func:`bind_worker_sockets`).  The sockets listen from
  the supervisor on, before the workers start, so the first worker up does not get
  every early connection.  The supervisor keeps every socket: a restarted worker
  serves the one its predecessor did.
* **Migrations** run once, in the supervisor, before any worker starts.
* **Shutdown**: SIGTERM/SIGINT to the supervisor is passed to every worker, which
  drains as one gateway does (``timeout_graceful_shutdown``).  A worker dies with its
  supervisor (``PR_SET_PDEATHSIG``): a SIGKILL of the supervisor is a crash of the whole
  gateway and, like any crash, loses nothing acknowledged.  uvicorn's supervisor
  restarts a worker that dies on its own.

``--workers 1`` does not come here: it is the single process it always was.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from starlette.applications import Starlette
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

from capirelay.config import Settings, load_settings
from capirelay.listen import bind_listener, cannot_listen
from capirelay.outbox import open_outbox
from capirelay.server.affinity import WORKER_CPU_ENV, pin_from_environment, worker_cpu

__all__ = ["WorkerSockets", "bind_worker_sockets", "default_workers", "serve_workers", "worker_app"]

log = logging.getLogger("capirelay.server")

# Environment handed from the supervisor to its workers (spawned, not forked).
_ENV_CONFIG = "CAPIRELAY_CONFIG"
_ENV_LOG = "CAPIRELAY_WORKER_LOG"
_ENV_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_PR_SET_PDEATHSIG = 1
# Pending connections per worker socket (uvicorn's default ``backlog``).
LISTEN_BACKLOG = 2048


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def worker_app() -> Starlette:
    """The app factory each worker process calls (uvicorn ``factory=True``)."""
    from capirelay.logs import configure_logging
    from capirelay.server.app import create_app
    from capirelay.server.collector import tune_for_serving

    _die_with_parent()
    # A worker that exits drops out of the live-worker gauges (breaker, allowance); one
    # that is SIGKILLed stays in them until the supervisor restarts (its counters, which
    # are cumulative, count either way).
    atexit.register(mark_process_dead, os.getpid())
    level, _, fmt = os.environ.get(_ENV_LOG, "info:text").partition(":")
    configure_logging(level, json=fmt == "json")
    pin_from_environment()  # before the gateway starts its threads: they inherit it
    app = create_app(load_settings())
    tune_for_serving()  # this process only serves from here on (capirelay.server.collector)
    return app


def _die_with_parent() -> None:
    """SIGKILL this worker when the supervisor dies, however it dies (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


async def _migrate(settings: Settings) -> None:
    """Open and close the outbox once: its migrations run here, not in N racing workers."""
    outbox = open_outbox(
        settings.storage,
        synchronous=settings.sqlite_synchronous,
        pool_size=settings.postgres_pool_size,
    )
    await outbox.open()
    await outbox.close()


def bind_worker_sockets(
    host: str, port: int, count: int, *, backlog: int = LISTEN_BACKLOG
) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port``, each with ``SO_REUSEPORT``: the
    kernel spreads new connections evenly over them (by a hash of the connection's
    addresses), so each worker accepts from its own.

    They listen from here, before any worker starts.  The kernel only hashes over the
    sockets that listen: left to each worker's server, the first worker up took every
    connection made before the others were (measured: all 32 of a load's connections
    on one worker in 4 starts of 5), and kept them for as long as they stayed open.
    Now a connection hashed to a worker still starting waits in its socket's backlog.

    A plain bind comes first: a port some other program (or another gateway) already
    listens on is refused here, as without ``SO_REUSEPORT``, instead of being shared;
    with ``port`` 0 it also picks the port every socket then binds."""
    with bind_listener(host, port) as probe:
        probe.listen(1)
        port = probe.getsockname()[1]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(bind_listener(host, port, reuse_port=True, backlog=backlog))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class WorkerSockets(Multiprocess):
    """uvicorn's supervisor, with each worker on a listening socket of its own.

    uvicorn hands all its workers ONE listening socket; whichever worker's loop wakes
    first accepts, so the connections of a steady load split unevenly (measured with
    two workers: one loop 90 % busy, the other 23 %).  Here worker slot ``i`` always
    serves ``sockets[i]`` (``SO_REUSEPORT``, :func:`bind_worker_sockets`), and the
    kernel balances the connections.  The supervisor keeps every socket open: a worker
    that dies and is restarted serves the same socket, and the connections that came
    meanwhile wait in its backlog for the replacement instead of being refused.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket.socket],
        cpus: list[int] | None = None,
    ) -> None:
        super().__init__(config, sockets=[])
        self.slots = sockets
        self.cpus = cpus

    def _spawn(self, idx: int) -> Process:
        process = Process(self.config, [self.slots[idx]])
        # A spawned worker starts with the supervisor's environment as it is now: the
        # slot's CPU rides in it (capirelay.server.affinity), a restart gets the same;
        # without --cpu-affinity the variable is absent, whatever the caller's env held.
        if self.cpus:
            os.environ[WORKER_CPU_ENV] = str(worker_cpu(self.cpus, idx))
        else:
            os.environ.pop(WORKER_CPU_ENV, None)
        try:
            process.start()
        finally:
            os.environ.pop(WORKER_CPU_ENV, None)
        return process

    def init_processes(self) -> None:
        for idx in range(self.processes_num):
            self.processes.append(self._spawn(idx))

    def keep_subprocess_alive(self) -> None:
        # uvicorn's, with the replacement on the dead worker's socket.
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            hung = process.process.is_alive()  # running, but no answer to the health check
            process.kill()  # hung: kill it
            process.join()
            if process.exitcode == STARTUP_FAILURE:
                log.error("worker [%s] failed to start, stopping the gateway", process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            # A warning, not info: the requests the worker was serving got no answer.
            if hung:
                log.warning(
                    "worker [%s] did not answer its health check within %s s; killed it, "
                    "restarting it (its requests in flight got no answer)",
                    process.pid,
                    self.config.timeout_worker_healthcheck,
                )
            else:
                log.warning(
                    "worker [%s] exited (code %s); restarting it", process.pid, process.exitcode
                )
            self.processes[idx] = self._spawn(idx)

    def restart_all(self) -> None:
        # SIGHUP: uvicorn's, each replacement on the socket of the worker it replaces.
        for idx, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._spawn(idx)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                if not self.should_exit.is_set():
                    log.error("worker [%s] not ready in time; restart aborted", new.pid)
                return
            old.terminate()
            old.join()
            self.processes[idx] = new

    def handle_ttin(self) -> None:
        # SIGTTIN: one more worker (as uvicorn does), on a socket of its own.
        host, port = self.slots[0].getsockname()[:2]
        try:
            self.slots.append(
                bind_listener(host, port, reuse_port=True, backlog=self.config.backlog)
            )
        except OSError as exc:
            log.error("SIGTTIN: no socket for one more worker: %s", exc)
            return
        self.processes_num += 1
        self.processes.append(self._spawn(len(self.processes)))

    def handle_ttou(self) -> None:
        # SIGTTOU: one worker fewer (as uvicorn does); its socket closes after it, so the
        # kernel stops sending it connections (any still in its backlog are reset).
        if self.processes_num <= 1:
            log.info("SIGTTOU: already one worker")
            return
        self.processes_num -= 1
        process = self.processes.pop()
        process.terminate()
        process.join()
        self.slots.pop().close()

    def run(self) -> None:
        try:
            super().run()
        finally:
            for sock in self.slots:
                sock.close()


def serve_workers(
    settings: Settings,
    *,
    config_file: str | None,
    workers: int,
    host: str,
    port: int,
    log_level: str,
    log_format: str,
    timeout_graceful_shutdown: int,
    cpus: list[int] | None = None,
) -> None:
    """Run ``workers`` gateway processes on ``host:port`` until SIGTERM/SIGINT; with
    ``cpus``, worker ``i`` is kept on ``cpus[i % len(cpus)]`` (``--cpu-affinity``)."""
    from capirelay.server.header_timeout import (
        BODY_TIMEOUT_ENV,
        HEADER_TIMEOUT_ENV,
        WORKER_PROTOCOL,
    )
    from capirelay.server.run import UVICORN_OPTIONS

    asyncio.run(_migrate(settings))
    metrics_dir = tempfile.mkdtemp(prefix="capirelay-metrics-")
    saved = {
        name: os.environ.get(name)
        for name in (_ENV_CONFIG, _ENV_LOG, _ENV_METRICS_DIR, HEADER_TIMEOUT_ENV, BODY_TIMEOUT_ENV)
    }
    if config_file is not None:
        os.environ[_ENV_CONFIG] = str(Path(config_file).resolve())
    os.environ[_ENV_LOG] = f"{log_level}:{log_format}"
    os.environ[_ENV_METRICS_DIR] = metrics_dir
    os.environ[HEADER_TIMEOUT_ENV] = str(settings.header_timeout_seconds)
    os.environ[BODY_TIMEOUT_ENV] = str(settings.body_timeout_seconds)
    try:
        config = uvicorn.Config(
            "capirelay.server.workers:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            log_config=None,
            timeout_graceful_shutdown=timeout_graceful_shutdown,
            **{**UVICORN_OPTIONS, "http": WORKER_PROTOCOL},
        )
        try:
            sockets = bind_worker_sockets(host, port, workers, backlog=config.backlog)
        except OSError as exc:
            log.error("%s", cannot_listen(host, port, exc))
            sys.exit(STARTUP_FAILURE)
        log.info(
            "capirelay: %d worker processes on %s:%d%s",
            workers,
            host,
            sockets[0].getsockname()[1],
            ""
            if not cpus
            else "; each kept on a CPU (worker: CPU) "
            + ", ".join(f"{i + 1}: {worker_cpu(cpus, i)}" for i in range(workers)),
        )
        if cpus and workers > len(cpus):
            log.warning(
                "--cpu-affinity names %d CPU(s) for %d workers: some workers share a CPU",
                len(cpus),
                workers,
            )
        WorkerSockets(config, sockets, cpus).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
