"""The ``--config`` / ``--storage`` pair of every command that opens the outbox directly
(``capirelay dlq ...``, ``capirelay migrate``), and how it resolves to a storage URL.

One definition keeps the flags, their help and the precedence (``--storage`` over
the config's ``storage``) the same across those commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["ConfigOpt", "StorageOpt", "storage_url"]

_err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="capirelay.toml (default: $CAPIRELAY_CONFIG).")
]
StorageOpt = Annotated[
    str | None, typer.Option("--storage", help="Storage URL; overrides the config's.")
]


def storage_url(config: Path | None, storage: str | None) -> str:
    """``--storage`` if given, else the settings' ``storage``; a bad config exits with 2."""
    if storage:
        return storage
    from capirelay.config import ConfigError, load_settings

    try:
        return load_settings(config).storage
    except ConfigError as exc:
        _err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
