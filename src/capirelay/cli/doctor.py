"""``capirelay doctor``: run :mod:`capirelay.ops.doctor` and print its verdicts.

A table on a terminal of 100 columns or more; narrower (80 columns, or a pipe, which
Rich takes as 80), one block per check: status and name, then the detail and the fix,
wrapped at the width.

Exit codes: 0 when nothing needs a human, 1 when a check failed (or, with
``--strict``, warned).  ``--json`` prints the same report for scripts and CI.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from capirelay.cli.storage import announce_config, load_config_or_exit
from capirelay.ops.doctor import DoctorReport, Status, run_doctor

_STYLES = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}
_SUMMARY = {
    Status.OK: "All checks passed.",
    Status.WARN: "Warnings: delivery works, but something degrades it or will break it later.",
    Status.FAIL: "Failures: events are being lost or will be; each check above says its fix.",
}


def doctor_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="Config file (default: $CAPIRELAY_CONFIG, else ./capirelay.toml)."
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 on warnings too, not only on failures.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check config, storage, Graph, tokens, API versions, clock, backlog, DLQ and match keys."""
    # Every finding is in the report; the library's own warnings would only repeat them.
    library_logger = logging.getLogger("capirelay")
    level = library_logger.level
    library_logger.setLevel(logging.ERROR)
    try:
        settings, path = load_config_or_exit(config)
        announce_config(path, settings)
        report = asyncio.run(run_doctor(path, settings=settings))
    finally:
        library_logger.setLevel(level)
    if as_json:
        typer.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        render(report, Console())
    code = report.exit_code(strict=strict)
    if code:
        raise typer.Exit(code)


# Below this many columns a four-column table leaves the detail a few characters wide
# (a long check name, such as Meta's dataset-quality keys, takes the rest): each
# check is then a block of its own, its text wrapped at the terminal's width.
TABLE_MIN_WIDTH = 100
# The widest the check column gets in the table; a longer name wraps inside it.
NAME_MAX_WIDTH = 32


def render(report: DoctorReport, console: Console) -> None:
    """The checks (check, status, what was seen, the fix) and a one-line verdict: a table
    on a wide terminal, one block per check on a narrow one (80 columns, a pipe)."""
    if console.width >= TABLE_MIN_WIDTH:
        console.print(_table(report))
    else:
        console.print(_blocks(report))
    console.print(Text(_SUMMARY[report.status], style=_STYLES[report.status]))


def _table(report: DoctorReport) -> Table:
    table = Table(title="capirelay doctor", show_lines=True, expand=True)
    table.add_column("check", max_width=NAME_MAX_WIDTH, overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("detail", ratio=3, min_width=20, overflow="fold")
    table.add_column("fix", ratio=4, min_width=20, overflow="fold")
    for check in report.checks:
        table.add_row(
            Text(check.name),
            Text(str(check.status), style=_STYLES[check.status]),
            Text(check.detail),
            Text(check.fix or ""),
        )
    return table


def _blocks(report: DoctorReport) -> Table:
    """``status  name`` then the detail and the fix under the name, a blank line between
    checks; words wrap whole (only a word wider than the terminal is folded)."""
    grid = Table.grid(padding=(0, 2))
    grid.title = "capirelay doctor"
    grid.add_column("status", no_wrap=True)
    grid.add_column("check", ratio=1, overflow="fold")
    for n, check in enumerate(report.checks):
        if n:
            grid.add_row()
        body = Text(check.name, style="bold")
        body.append("\n" + check.detail)
        if check.fix:
            body.append("\nfix: " + check.fix)
        grid.add_row(Text(str(check.status), style=_STYLES[check.status]), body)
    return grid
