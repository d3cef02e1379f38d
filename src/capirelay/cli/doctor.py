"""``capirelay doctor``: run :mod:`capirelay.ops.doctor` and print its verdicts as a Rich table.

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
    Status.FAIL: "Failures: events are being lost or will be; the fixes are in the table.",
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


def render(report: DoctorReport, console: Console) -> None:
    """The checks as a table (check, status, what was seen, the fix) and a one-line verdict."""
    table = Table(title="capirelay doctor", show_lines=True, expand=True)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", ratio=3, overflow="fold")
    table.add_column("fix", ratio=4, overflow="fold")
    for check in report.checks:
        table.add_row(
            Text(check.name),
            Text(str(check.status), style=_STYLES[check.status]),
            Text(check.detail),
            Text(check.fix or ""),
        )
    console.print(table)
    console.print(Text(_SUMMARY[report.status], style=_STYLES[report.status]))
