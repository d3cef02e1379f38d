"""``capirelay trace EVENT_ID``: did this event reach Meta, when, and with which answer?

Reads the receipts, the queue and the dead-letter store of the configured storage
(the same settings as ``capirelay serve``) and prints the event's story: received →
attempts → delivered / dead-lettered, with Meta's ``fbtrace_id`` for each answer.
``--order`` looks the event up by ``custom_data.order_id`` instead.  Exit 0 when
the event was delivered, 1 when it is unknown or not (yet) delivered, 2 on a
usage or configuration error.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from capirelay.cli._output import blocks, error, fits
from capirelay.cli.storage import ConfigOpt, StorageOpt, existing_storage_url
from capirelay.ops.trace import Step, iso, status_of, story, trace_json
from capirelay.outbox.receipts import TraceRecord

__all__ = ["trace_command"]

console = Console(soft_wrap=True)
# Piped or redirected output has no width to fit: a table as wide as its longest values,
# so a grep or a file gets every fbtrace_id and error message whole.
PIPE_WIDTH = 100_000


def _out() -> Console:
    return console if console.is_terminal else Console(soft_wrap=True, width=PIPE_WIDTH)


async def _load(url: str, key: str, pixel: str | None, by_order: bool) -> list[TraceRecord]:
    from capirelay.outbox import open_outbox

    outbox = open_outbox(url)
    await outbox.open()
    try:
        if by_order:
            ids = await outbox.event_ids_for_order(key, pixel_id=pixel)
        else:
            ids = [key]
        return [await outbox.trace(event_id, pixel_id=pixel) for event_id in ids]
    finally:
        await outbox.close()


def trace_command(
    event_id: Annotated[str, typer.Argument(help="The event_id (or, with --order, an order id).")],
    pixel: Annotated[str | None, typer.Option("--pixel", help="Only this pixel.")] = None,
    order: Annotated[
        bool, typer.Option("--order", help="EVENT_ID is a custom_data.order_id.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    config: ConfigOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Show an event's whole story: queued, attempts, delivered or dead-lettered."""
    url = existing_storage_url(config, storage)  # reading: never creates a database
    try:
        records = asyncio.run(_load(url, event_id, pixel, order))
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    records = [r for r in records if r.known]
    if as_json:
        out = (
            [trace_json(r) for r in records]
            if order
            else (
                trace_json(records[0]) if records else {"event_id": event_id, "status": "unknown"}
            )
        )
        typer.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    elif not records:
        what = "order id" if order else "event_id"
        where = f" for pixel {pixel}" if pixel else ""
        console.print(
            f"No event with {what} {event_id!r}{where}: never received, or its receipt is older "
            "than the retention (receipts.retention_days)."
        )
    for record in [] if as_json else records:
        _print(record)
    if not records or not all(r.delivered for r in records):
        raise typer.Exit(1)


def _print(record: TraceRecord) -> None:
    status = status_of(record)
    colour = {"delivered": "green", "queued": "yellow"}.get(status, "red")
    out = _out()
    out.print(f"[bold]{record.event_id}[/bold]: [{colour}]{status}[/{colour}]")
    steps = story(record)
    table = Table(show_header=True, header_style="bold")
    for column in ("when (UTC)", "pixel", "event", "step", "detail", "fbtrace_id"):
        table.add_column(column)
    for step in steps:
        table.add_row(
            iso(step.at) or "-",
            step.pixel_id,
            step.event_name,
            step.what,
            step.detail,
            step.fbtrace_id or "",
        )
    if fits(out, table):
        out.print(table)
    else:  # too narrow (80 columns): one block per step, every value whole
        out.print(blocks(None, [(iso(step.at) or "-", _step_lines(step)) for step in steps]))


def _step_lines(step: Step) -> list[str]:
    lines = [f"{step.what}, {step.event_name}, pixel {step.pixel_id}"]
    if step.detail:
        lines.append(step.detail)
    if step.fbtrace_id:
        lines.append(f"fbtrace_id {step.fbtrace_id}")
    return lines
