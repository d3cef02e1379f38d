"""Run the gateway under uvicorn: ``serve(settings, host=, port=)`` and the ``main`` entry point.

Shutdown on SIGTERM/SIGINT is uvicorn's: stop accepting connections, let
in-flight requests finish (at most ``timeout_graceful_shutdown`` seconds),
then run the app's lifespan shutdown, which stops the delivery engine (it
finishes or releases in-flight batches) and closes the outbox (pending writes
committed).  A SIGKILL skips all that and loses nothing acknowledged: a 202
is only sent after the commit, and leased batches come back when their lease
expires.

uvicorn's own access log and proxy-header rewriting are off: the app logs
requests without query strings or client IPs, and applies ``trusted_proxies``
itself when it reads ``X-Forwarded-For``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from capirelay.config import ConfigError, Settings, config_path, load_settings, redact_storage_url
from capirelay.config_errors import locate
from capirelay.listen import listen_refusal
from capirelay.logs import logging_configured
from capirelay.outbox import sqlite_path_from_url
from capirelay.server.affinity import cpus_for_workers, pin_this_process
from capirelay.server.app import create_app
from capirelay.server.collector import serving_collector
from capirelay.server.head_limits import MAX_HEAD_BYTES
from capirelay.server.header_timeout import gateway_protocol
from capirelay.server.workers import serve_workers

__all__ = [
    "DEFAULT_GRACEFUL_SHUTDOWN_SECONDS",
    "UVICORN_OPTIONS",
    "build_server",
    "describe_storage",
    "main",
    "serve",
]

DEFAULT_GRACEFUL_SHUTDOWN_SECONDS = 10

# The server options every gateway process runs with (bench/wrk/floor.py uses the same,
# so the benchmark's floor measures the framework under identical settings).
UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "auto",  # uvloop when installed
    "http": "auto",  # httptools when installed
    "lifespan": "on",
    "access_log": False,
    "server_header": False,
    "proxy_headers": False,
    # h11 (when httptools is not installed) buffers an incomplete head up to this; the
    # gateway's own bound on heads (capirelay.server.head_limits) is the same.
    "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
}


def build_server(
    settings: Settings,
    *,
    host: str,
    port: int,
    log_level: str = "info",
    timeout_graceful_shutdown: int = DEFAULT_GRACEFUL_SHUTDOWN_SECONDS,
    log_config: dict[str, Any] | None = LOGGING_CONFIG,
) -> uvicorn.Server:
    """A configured, not yet running uvicorn server for the gateway app.

    ``log_config=None`` leaves logging to the caller (``configure_logging``).
    """
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        log_config=log_config,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        **{
            **UVICORN_OPTIONS,
            # httptools when installed, one write per response, refusing heads over
            # the size limits, closing connections whose headers take too long
            "http": gateway_protocol(
                settings.header_timeout_seconds, settings.body_timeout_seconds
            ),
        },
    )
    return uvicorn.Server(config)


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
    timeout_graceful_shutdown: int = DEFAULT_GRACEFUL_SHUTDOWN_SECONDS,
    log_config: dict[str, Any] | None = LOGGING_CONFIG,
) -> None:
    """Run the gateway until SIGTERM/SIGINT; host and port default to the settings'."""
    server = build_server(
        settings,
        host=host or settings.host,
        port=settings.port if port is None else port,
        log_level=log_level,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        log_config=log_config,
    )
    with serving_collector():
        server.run()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m capirelay.server", description="Run the capirelay gateway."
    )
    parser.add_argument(
        "--config", help="capirelay.toml (default: $CAPIRELAY_CONFIG or ./capirelay.toml)"
    )
    parser.add_argument("--host", help="interface to bind (default: settings.host)")
    parser.add_argument("--port", type=int, help="port to bind (default: settings.port)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object per line (ts, level, logger, message, extra fields)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes sharing the port (1: a single process; 'capirelay serve "
        "--workers auto': one per core)",
    )
    parser.add_argument(
        "--cpu-affinity",
        default="off",
        help="off (default), auto (worker i on the i-th CPU this process may use) or a "
        "CPU list such as 0-3,6: each gateway process kept on one CPU",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=int,
        default=DEFAULT_GRACEFUL_SHUTDOWN_SECONDS,
        help="seconds to let requests and delivery finish on SIGTERM",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with logging_configured(args.log_level, json=args.log_format == "json"):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    start = _start_up(args)
    if isinstance(start, int):
        return start
    _log_config_and_storage(start.path, start.settings)
    if start.server is None:
        serve_workers(
            start.settings,
            config_file=args.config,
            workers=args.workers,
            host=start.host,
            port=start.port,
            log_level=args.log_level,
            log_format=args.log_format,
            timeout_graceful_shutdown=args.graceful_timeout,
            cpus=start.cpus,
        )
        return 0
    with serving_collector():
        start.server.run()
    return 0


@dataclass(frozen=True)
class _Start:
    """What passed the start-up checks: ``server`` is the single process's, ``None`` with
    ``--workers`` above 1 (each worker builds its own)."""

    path: Path | None
    settings: Settings
    host: str
    port: int
    cpus: list[int] | None
    server: uvicorn.Server | None


def _start_up(args: argparse.Namespace) -> _Start | int:
    """Every check made before the gateway starts, one process or several alike; the exit
    status (2, the mistake told on stderr in one line) when one fails."""
    path = None
    try:
        path = config_path(args.config)
        settings = load_settings(args.config)
        if args.workers < 1:
            raise ConfigError(f"--workers must be at least 1 (got {args.workers})")
        cpus = cpus_for_workers(args.cpu_affinity)
        host = args.host or settings.host
        port = settings.port if args.port is None else args.port
        # Before anything starts (storage, app, workers): a taken port is one line, exit 2.
        refusal = listen_refusal(host, port)
        if refusal is not None:
            sys.stderr.write(f"{refusal}\n")
            return 2
        # Building the app validates what the settings refer to (webhook presets, mapping
        # files): a mistake there is a config error too, not a traceback, and with several
        # workers one line from the supervisor, not N crashing workers.
        server = None
        if args.workers > 1:
            create_app(settings)
        else:
            if cpus and pin_this_process(cpus[0]):
                # Before the app starts its threads (writer, sync, delivery): they inherit it.
                logging.getLogger("capirelay.server").info("capirelay: kept on CPU %d", cpus[0])
            server = build_server(
                settings,
                host=host,
                port=port,
                log_level=args.log_level,
                timeout_graceful_shutdown=args.graceful_timeout,
                log_config=None,  # configure_logging above owns every logger, uvicorn's too
            )
    except ConfigError as exc:
        # One line per mistake, FILE:LINE:COL first, straight to stderr: no log prefix.
        sys.stderr.write(f"{locate(exc.path or path, str(exc))}\n")
        return 2
    if not settings.pixels:
        where = f"{path} has" if path is not None else "no capirelay.toml found, and"
        sys.stderr.write(
            f"{where} no [pixels.<PIXEL_ID>] table: nothing could be delivered; "
            "run `capirelay init` to write a config (or pass --config FILE)\n"
        )
        return 2
    return _Start(path, settings, host, port, cpus, server)


def _log_config_and_storage(path: Path | None, settings: Settings) -> None:
    logging.getLogger("capirelay.server").info(
        "config %s, storage %s",
        path if path is not None else "(none: defaults and CAPIRELAY_* variables)",
        describe_storage(settings.storage),
    )


def describe_storage(url: str) -> str:
    """The storage URL as logged (a password masked), and for SQLite the file it opens: a
    relative path (three slashes) is opened from the current directory, which the URL
    alone does not say."""
    shown = redact_storage_url(url)
    try:
        path = sqlite_path_from_url(url)
    except ValueError:  # PostgreSQL (or a URL that fails later, with its own message)
        return shown
    return f"{shown} (SQLite file {os.path.abspath(path)})"


if __name__ == "__main__":
    raise SystemExit(main())
