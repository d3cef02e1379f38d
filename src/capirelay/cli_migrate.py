"""``capirelay migrate``: bring a PostgreSQL outbox schema up to date, then exit.

The gateway migrates on start as well (under the same advisory lock, so replicas
starting together are safe); this command is for deployments that prefer to run
schema changes as a separate step (a Kubernetes init container or Job, a
release hook) and for checking what a database holds.  The storage comes from
``--storage URL`` or from the settings (``--config`` or ``CAPIRELAY_CONFIG``).
The URL is never printed: it may hold a password.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from capirelay.outbox import StorageUnavailable

console = Console()
err_console = Console(stderr=True)

_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def _storage_url(config: Path | None, storage: str | None) -> str:
    if storage:
        return storage
    from capirelay.config import ConfigError, load_settings

    try:
        return load_settings(config).storage
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def migrate_command(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="capirelay.toml (default: $CAPIRELAY_CONFIG)."),
    ] = None,
    storage: Annotated[
        str | None, typer.Option("--storage", help="Storage URL; overrides the config's.")
    ] = None,
) -> None:
    """Apply the outbox schema migrations a PostgreSQL database is missing."""
    from capirelay.outbox.migrate import MIGRATIONS, migrate_url
    from capirelay.outbox.postgres import postgres_conninfo

    url = _storage_url(config, storage)
    if not url.startswith(_POSTGRES_SCHEMES):
        console.print(
            "nothing to do: the SQLite outbox migrates itself when it opens "
            '(capirelay migrate is for storage = "postgresql://...")'
        )
        raise typer.Exit(1)
    try:
        applied = asyncio.run(migrate_url(postgres_conninfo(url)))
    except StorageUnavailable as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    latest = MIGRATIONS[-1].version
    if applied:
        console.print(
            f"applied migrations {', '.join(map(str, applied))}; schema at version {latest}"
        )
    else:
        console.print(f"up to date (version {latest})")
