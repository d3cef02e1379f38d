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
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table

__all__ = ["err_console", "error", "fits", "warning"]

err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def error(message: str) -> None:
    """``message``, in red, on stderr, brackets and all."""
    err_console.print(f"[red]{escape(message)}[/red]")


def warning(message: str) -> None:
    """``message``, in yellow, on stderr, brackets and all."""
    err_console.print(f"[yellow]{escape(message)}[/yellow]")


def fits(console: Console, table: Table) -> bool:
    """Whether every cell of ``table`` fits ``console``'s width on one line, whole: what
    Rich would otherwise cut with an ellipsis (an id, a date) or wrap."""
    options = console.options
    widths = [
        max(
            Measurement.get(console, options, cell).maximum
            for cell in [column.header, *column.cells]
        )
        for column in table.columns
    ]
    _, right, _, left = Padding.unpack(table.padding)
    lines = 0
    if table.box is not None:
        lines = len(widths) - 1 + (2 if table.show_edge else 0)
    return sum(widths) + len(widths) * (left + right) + lines <= console.width
