"""What every command writes to stderr: one console, and errors printed as written.

Messages name config tables (``add [pixels.1234567890] to the config``), and Rich
reads square brackets as its own markup: printed through a Rich console unescaped,
the table name vanished (``add  to the config``).  :func:`error` and :func:`warning`
escape the message; the console never wraps a line (one line per problem, whatever
the terminal's width) and adds no colours of its own.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

__all__ = ["err_console", "error", "warning"]

err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def error(message: str) -> None:
    """``message``, in red, on stderr, brackets and all."""
    err_console.print(f"[red]{escape(message)}[/red]")


def warning(message: str) -> None:
    """``message``, in yellow, on stderr, brackets and all."""
    err_console.print(f"[yellow]{escape(message)}[/yellow]")
