"""``capirelay demo``: gateway, Graph API emulator and a demo shop on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()


def demo_command(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", help="Port of the gateway and shop (0: any free port).")
    ] = 8080,
    db: Annotated[Path, typer.Option("--db", help="SQLite file for the demo's queue.")] = Path(
        "capirelay-demo.db"
    ),
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Send one sample event, show it delivered, run Meta diagnostics once, "
            "exit (1 if a check fails).",
        ),
    ] = False,
) -> None:
    """Gateway + local Graph API emulator + a demo shop page, all on this machine.

    Prints the shop and dashboard URLs, the dashboard token, the ingest key with
    a curl example, and writes the demo's settings beside --db, named after it
    (capirelay-demo.toml for the default), so `capirelay dlq list --config FILE`
    reads its queue.
    ./capirelay.toml is not read.  Ctrl-C stops it.
    """
    import asyncio
    import logging

    from capirelay.demo import DemoOptions, run_demo
    from capirelay.logs import logging_configured

    with logging_configured(logging.WARNING):
        try:
            code = asyncio.run(
                run_demo(DemoOptions(host=host, port=port, db_path=db, once=once), console)
            )
        except KeyboardInterrupt:  # a second Ctrl-C during shutdown
            code = 0
    if code:
        raise typer.Exit(code)
