"""``capirelay migrate``: bring a PostgreSQL outbox schema up to date, then exit.

The gateway migrates on start as well (under the same advisory lock, so replicas
starting together are safe); this command is for deployments that prefer to run
schema changes as a separate step (a Kubernetes init container or Job, a
release hook) and for checking what a database holds.  The storage comes from
``--storage URL`` or from the settings (``--config`` or ``CAPIRELAY_CONFIG``).
The URL is never printed: it may hold a password.

``--from sqlite:///... --to postgresql://...`` moves a SQLite outbox into PostgreSQL
instead (gateway stopped; see :mod:`capirelay.outbox.transfer`).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console

from capirelay.cli._output import error
from capirelay.cli.storage import ConfigOpt, StorageOpt, exit_if_postgres_refused, storage_url
from capirelay.outbox import StorageUnavailable

console = Console()

_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


FromOpt = Annotated[
    str | None,
    typer.Option("--from", help="Copy this SQLite outbox (sqlite:///path) into --to."),
]
ToOpt = Annotated[
    str | None, typer.Option("--to", help="The PostgreSQL storage URL to copy --from into.")
]
MergeOpt = Annotated[
    bool, typer.Option("--merge", help="With --from: add to a PostgreSQL outbox holding rows.")
]


def migrate_command(
    config: ConfigOpt = None,
    storage: StorageOpt = None,
    source: FromOpt = None,
    target: ToOpt = None,
    merge: MergeOpt = False,
) -> None:
    """Apply the outbox schema migrations a PostgreSQL database is missing.

    With --from and --to: copy a SQLite outbox into PostgreSQL (stop the gateway first).
    """
    from capirelay.outbox.postgres import postgres_conninfo
    from capirelay.outbox.postgres.migrate import MIGRATIONS, migrate_url

    if source is not None or target is not None:
        from capirelay.cli.transfer import transfer_command

        transfer_command(source, target, merge=merge)
        return
    url = storage_url(config, storage)
    if not url.startswith(_POSTGRES_SCHEMES):
        # Success: a deploy step that runs `capirelay migrate` before `serve` whatever
        # the backend must not fail on SQLite (it exited 1).
        console.print(
            "nothing to do: the SQLite outbox migrates itself when it opens "
            '(capirelay migrate is for storage = "postgresql://...")'
        )
        return
    try:
        conninfo = postgres_conninfo(url)
    except ValueError as exc:
        error(f"storage: {exc}")
        raise typer.Exit(2) from None
    try:
        applied = asyncio.run(migrate_url(conninfo))
    except StorageUnavailable as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    except Exception as exc:
        exit_if_postgres_refused(exc)
        raise
    latest = MIGRATIONS[-1].version
    if applied:
        console.print(
            f"applied migrations {', '.join(map(str, applied))}; schema at version {latest}"
        )
    else:
        console.print(f"up to date (version {latest})")
