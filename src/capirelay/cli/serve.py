"""``capirelay serve``: run the gateway in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="capirelay.toml (default: $CAPIRELAY_CONFIG or ./capirelay.toml)"
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Interface (default: settings.host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port (default: settings.port).")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    log_format: Annotated[
        str, typer.Option("--log-format", help="text, or json: one JSON object per line.")
    ] = "text",
    workers: Annotated[
        str,
        typer.Option(
            "--workers",
            envvar="CAPIRELAY_WORKERS",
            help="Gateway processes sharing the port: a number, or 'auto' for one per core "
            "(default 1, a single process; docs/benchmarks.md measures a second worker on "
            "the 2-core benchmark machine).",
        ),
    ] = "1",
    cpu_affinity: Annotated[
        str,
        typer.Option(
            "--cpu-affinity",
            envvar="CAPIRELAY_CPU_AFFINITY",
            help="Keep each gateway process on one CPU: 'off' (default), 'auto' (worker i "
            "on the i-th CPU this process may use) or a CPU list such as '0-3,6'. Helps "
            "with one worker per CPU on a machine or container the gateway has to itself "
            "(see docs/benchmarks.md).",
        ),
    ] = "off",
) -> None:
    """Run the gateway: ingest, durable queue, delivery to Meta (SIGTERM stops it gracefully)."""
    from capirelay.server.run import main as serve_main
    from capirelay.server.workers import default_workers

    argv = ["--log-level", log_level, "--log-format", log_format]
    if workers.strip().lower() == "auto":
        count = default_workers()
    else:
        try:
            count = int(workers)
        except ValueError:
            typer.echo(f"--workers: expected a number or 'auto', got {workers!r}", err=True)
            raise typer.Exit(2) from None
    argv += ["--workers", str(count), "--cpu-affinity", cpu_affinity]
    if config is not None:
        argv += ["--config", str(config)]
    if host is not None:
        argv += ["--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    code = serve_main(argv)
    if code:
        raise typer.Exit(code)
