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

import typer
from rich.console import Console

from capirelay.cli.storage import ConfigOpt, StorageOpt, storage_url
from capirelay.outbox import StorageUnavailable

console = Console()
err_console = Console(stderr=True)

_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def migrate_command(config: ConfigOpt = None, storage: StorageOpt = None) -> None:
    """Apply the outbox schema migrations a PostgreSQL database is missing."""
    from capirelay.outbox.migrate import MIGRATIONS, migrate_url
    from capirelay.outbox.postgres import postgres_conninfo

    url = storage_url(config, storage)
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
