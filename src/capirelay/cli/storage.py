"""How every command finds its config and storage, and says which it uses.

The config file is ``--config``, else ``$CAPIRELAY_CONFIG``, else
``./capirelay.toml`` (when it exists; otherwise defaults and ``CAPIRELAY_*``
variables).  ``--storage`` overrides the config's ``storage``.  Each command
prints, on stderr, which config and storage it uses (a password in a
PostgreSQL URL is masked), so an empty answer from the wrong database is never
mistaken for an empty queue.  A config mistake is one ``FILE:LINE:COL: ...``
line and exit status 2.

Commands that only read (``dlq list``, ``dlq show``) refuse a SQLite file that
does not exist instead of creating an empty database as a side effect.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from capirelay.cli._output import error

if TYPE_CHECKING:
    from capirelay.config import Settings

__all__ = [
    "ConfigOpt",
    "StorageOpt",
    "announce_config",
    "existing_storage_url",
    "exit_if_postgres_refused",
    "load_config_or_exit",
    "sqlite_file",
    "storage_url",
]

EXIT_USAGE = 2

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="Config file (default: $CAPIRELAY_CONFIG, else ./capirelay.toml)."
    ),
]
StorageOpt = Annotated[
    str | None, typer.Option("--storage", help="Storage URL; overrides the config's.")
]


def load_config_or_exit(config: Path | None) -> tuple[Settings, Path | None]:
    """The settings and the file they came from; a mistake prints its line(s) and exits 2."""
    from capirelay.config import ConfigError, config_path, load_settings

    try:
        path = config_path(config)
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_USAGE) from None
    return settings, path


def storage_url(config: Path | None, storage: str | None, *, announce: bool = True) -> str:
    """``--storage`` if given, else the settings' ``storage``; says which on stderr."""
    from capirelay.config import redact_storage_url

    if storage:
        if announce:
            typer.echo(f"storage: {redact_storage_url(storage)} (from --storage)", err=True)
        return storage
    settings, path = load_config_or_exit(config)
    if announce:
        announce_config(path, settings)
    return settings.storage


def announce_config(path: Path | None, settings: Settings) -> None:
    """``config: FILE  storage: URL`` on stderr (a password in the URL masked)."""
    from capirelay.config import redact_storage_url

    source = str(path) if path is not None else "no config file (defaults, CAPIRELAY_*)"
    typer.echo(f"config: {source}  storage: {redact_storage_url(settings.storage)}", err=True)


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///...`` URL (``None`` for other backends and in-memory)."""
    for prefix in ("sqlite:///", "sqlite://"):
        if url.startswith(prefix):
            rest = url[len(prefix) :].split("?", 1)[0]
            if not rest or rest == ":memory:":
                return None
            return Path(rest)
    return None


def existing_storage_url(config: Path | None, storage: str | None) -> str:
    """Like :func:`storage_url`, for commands that only read: a missing SQLite file exits 1."""
    url = storage_url(config, storage)
    path = sqlite_file(url)
    if path is not None and not path.exists():
        demo = Path("capirelay-demo.toml")
        hint = (
            f"; the demo's queue: --config {demo}"
            if demo.is_file() and (config is None or Path(config) != demo)
            else ""
        )
        typer.echo(
            f"no database at {path}: nothing has been queued there yet, or this is not the "
            "config you meant (pass --config FILE or set CAPIRELAY_CONFIG); "
            f"nothing was created{hint}",
            err=True,
        )
        raise typer.Exit(1)
    return url


def exit_if_postgres_refused(exc: Exception) -> None:
    """Exit 1 with one line when ``exc`` is PostgreSQL refusing (no rights, no schema, an
    unknown option: :func:`~capirelay.outbox.postgres.postgres_refusal`); else return,
    for the caller to re-raise."""
    from capirelay.outbox.postgres import postgres_refusal

    refusal = postgres_refusal(exc)
    if refusal is not None:
        error(refusal)
        raise typer.Exit(1) from None
