"""``capirelay migrate --from sqlite:///... --to postgresql://...``: the SQLite-to-PostgreSQL move.

Prints what moved, table by table; the URLs are never printed (they may hold passwords).
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from capirelay.cli._output import err_console, error
from capirelay.cli.storage import exit_if_postgres_refused
from capirelay.outbox import StorageUnavailable, sqlite_path_from_url

console = Console()

_POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def transfer_command(source: str | None, target: str | None, *, merge: bool) -> None:
    """Copy the SQLite outbox ``source`` into the PostgreSQL outbox ``target``."""
    from capirelay.outbox.postgres import postgres_conninfo
    from capirelay.outbox.transfer import transfer

    if source is None or not source.startswith("sqlite:///") or source == "sqlite:///:memory:":
        err_console.print(
            "--from must name the SQLite outbox file, e.g. --from sqlite:///./capirelay.db"
        )
        raise typer.Exit(2)
    if target is None or not target.startswith(_POSTGRES_SCHEMES):
        err_console.print(
            "--to must be a PostgreSQL URL, e.g. --to postgresql://user@host:5432/capirelay"
        )
        raise typer.Exit(2)
    try:
        conninfo = postgres_conninfo(target)
    except ValueError as exc:
        error(f"--to: {exc}")
        raise typer.Exit(2) from None

    def waiting(seconds: float) -> None:
        err_console.print(
            f"another process holds the SQLite file's write lock; waiting up to {seconds:g} s "
            "for it (stop the gateway and anything else using the file)"
        )

    try:
        report = transfer(sqlite_path_from_url(source), conninfo, merge=merge, on_wait=waiting)
    except KeyboardInterrupt:
        error(
            "interrupted: the copy is one transaction, so PostgreSQL holds all of its rows "
            "or none of them, and the SQLite file keeps every event; run it again with "
            "--merge (which adds only what is missing)"
        )
        raise typer.Exit(130) from None
    except StorageUnavailable as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    except RuntimeError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    except Exception as exc:
        exit_if_postgres_refused(exc)
        raise
    if report.sqlite_version != report.sqlite_version_before:
        console.print(
            f"SQLite outbox upgraded from schema version {report.sqlite_version_before} "
            f"to {report.sqlite_version} first"
        )
    if report.postgres_migrations_applied:
        applied = ", ".join(map(str, report.postgres_migrations_applied))
        console.print(f"PostgreSQL schema created (migrations {applied})")
    table = Table("table", "in SQLite", "copied", "already in PostgreSQL" if merge else "")
    for result in report.tables:
        table.add_row(
            result.label,
            str(result.source_rows),
            str(result.copied),
            str(result.skipped) if merge else "",
        )
    console.print(table)
    if report.released_leases:
        console.print(
            f"{report.released_leases} events were leased by the stopped gateway: "
            "they are ready to send again (Meta deduplicates a resend by event_id)"
        )
    console.print(
        f"copied {report.total} rows in one transaction; counts verified. "
        'Now set storage = "postgresql://..." in the config and start the gateway; '
        "keep the SQLite file until the gateway runs on PostgreSQL."
    )
