"""What every command writes to stderr: one console, and errors printed as written.

Messages name config tables (``add [pixels.1234567890] to the config``), and Rich
reads square brackets as its own markup: printed through a Rich console unescaped,
the table name vanished (``add  to the config``).  :func:`error` and :func:`warning`
escape the message; the console never wraps a line (one line per problem, whatever
the terminal's width) and adds no colours of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

__all__ = ["blocks", "err_console", "error", "fits", "warning"]

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


def blocks(title: str | None, rows: Iterable[tuple[str, Sequence[str]]]) -> Table:
    """What to print instead of a table that does not :func:`fits`: one block per row, its
    key (an id, a time) then each of its lines whole on a line of its own, a blank line
    between blocks (only a value wider than the terminal folds)."""
    grid = Table.grid(padding=(0, 2))
    grid.title = title
    grid.add_column(no_wrap=True, justify="right")
    grid.add_column(overflow="fold")
    for n, (key, lines) in enumerate(rows):
        if n:
            grid.add_row()
        grid.add_row(key, Text("\n").join(Text(line) for line in lines))
    return grid
