"""``capirelay serve --workers N``: N gateway processes on one listening socket.

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
import tempfile
from pathlib import Path

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from starlette.applications import Starlette
from uvicorn.supervisors import Multiprocess

from capirelay.config import Settings, load_settings
from capirelay.outbox import open_outbox

__all__ = ["default_workers", "serve_workers", "worker_app"]

log = logging.getLogger("capirelay.server")

# Environment handed from the supervisor to its workers (spawned, not forked).
_ENV_CONFIG = "CAPIRELAY_CONFIG"
_ENV_LOG = "CAPIRELAY_WORKER_LOG"
_ENV_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_PR_SET_PDEATHSIG = 1


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
) -> None:
    """Run ``workers`` gateway processes on ``host:port`` until SIGTERM/SIGINT."""
    from capirelay.server.header_timeout import HEADER_TIMEOUT_ENV, WORKER_PROTOCOL
    from capirelay.server.run import UVICORN_OPTIONS

    asyncio.run(_migrate(settings))
    metrics_dir = tempfile.mkdtemp(prefix="capirelay-metrics-")
    saved = {
        name: os.environ.get(name)
        for name in (_ENV_CONFIG, _ENV_LOG, _ENV_METRICS_DIR, HEADER_TIMEOUT_ENV)
    }
    if config_file is not None:
        os.environ[_ENV_CONFIG] = str(Path(config_file).resolve())
    os.environ[_ENV_LOG] = f"{log_level}:{log_format}"
    os.environ[_ENV_METRICS_DIR] = metrics_dir
    os.environ[HEADER_TIMEOUT_ENV] = str(settings.header_timeout_seconds)
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
        log.info("capirelay: %d worker processes on %s:%d", workers, host, port)
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
