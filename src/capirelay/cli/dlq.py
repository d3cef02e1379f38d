"""``capirelay dlq list|show|replay|purge|audit``: the dead-letter queue from the terminal.

Thin wrappers over :mod:`capirelay.ops.dlq`.  The storage comes from the same
settings as ``capirelay serve`` (``--config`` or ``CAPIRELAY_CONFIG``), or
``--storage URL``.  Everything shown is hashed: dead letters hold wire events,
never raw identifiers.  ``replay`` and ``purge`` act on explicit ids or on a
filter; a filter-wide purge asks for ``--yes``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import getpass
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from capirelay.cli._output import blocks, err_console, error, fits
from capirelay.cli.storage import ConfigOpt, StorageOpt, existing_storage_url
from capirelay.outbox import DLQFilter, Outbox
from capirelay.wording import counted

if TYPE_CHECKING:
    from capirelay.ops.dlq import DeadLetterSummary
    from capirelay.outbox import AuditRecord

dlq_app = typer.Typer(help="Inspect, replay and purge dead-lettered events.", no_args_is_help=True)
console = Console()
T = TypeVar("T")

PixelOpt = Annotated[str | None, typer.Option("--pixel", help="Only this pixel.")]
EventOpt = Annotated[str | None, typer.Option("--event-name", help="Only this event name.")]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", help="invalid, expired, config or rejected.")
]
SinceOpt = Annotated[
    str | None, typer.Option("--since", help="Dead-lettered at or after (ISO date/time).")
]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Dead-lettered before (ISO).")]
IdsArg = Annotated[list[int] | None, typer.Argument(help="Dead-letter ids; or use filters.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter.")]


def _with_outbox(url: str, action: Callable[[Outbox], Awaitable[T]]) -> T:
    from capirelay.outbox import open_outbox

    async def run() -> T:
        outbox = open_outbox(url)
        await outbox.open()
        try:
            return await action(outbox)
        finally:
            await outbox.close()

    try:
        return asyncio.run(run())
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(2) from None


def _timestamp(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        error(f"{option} takes an ISO date or date-time, e.g. 2026-11-26T10:00")
        raise typer.Exit(2) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _filter(
    pixel: str | None,
    event_name: str | None,
    reason: str | None,
    since: str | None,
    until: str | None,
) -> DLQFilter:
    return DLQFilter(
        pixel_id=pixel,
        event_name=event_name,
        reason=reason,
        since=_timestamp(since, "--since"),
        until=_timestamp(until, "--until"),
    )


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@dlq_app.command("list")
def list_command(
    config: ConfigOpt = None,
    storage: StorageOpt = None,
    pixel: PixelOpt = None,
    event_name: EventOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    offset: Annotated[int, typer.Option("--offset")] = 0,
) -> None:
    """List dead letters, newest first."""
    from capirelay.ops import dlq

    flt = _filter(pixel, event_name, reason, since, until)
    rows = _with_outbox(
        existing_storage_url(config, storage),
        lambda o: dlq.list_dead_letters(o, flt, limit=limit, offset=offset),
    )
    if not rows:
        console.print("The dead-letter queue is empty for this filter.")
        return
    table = _dead_letter_table(rows)
    console.print(table if fits(console, table) else _dead_letter_blocks(rows))


def _meta_error(r: DeadLetterSummary) -> str:
    return f"{r.code}/{r.subcode}" if r.code is not None else "-"


def _dead_letter_table(rows: list[DeadLetterSummary]) -> Table:
    """Every value whole on one line: ids, codes, the reason and the time never wrap."""
    table = Table(title="Dead letters")
    for column in ("id", "pixel", "event", "event_id", "reason", "meta error", "attempts"):
        table.add_column(column, no_wrap=column != "event")
    table.add_column("dead at (UTC)", no_wrap=True)
    for r in rows:
        table.add_row(
            str(r.id),
            r.pixel_id,
            r.event_name,
            r.event_id,
            r.reason,
            _meta_error(r),
            str(r.attempts),
            _when(r.dead_at),
        )
    return table


def _dead_letter_blocks(rows: list[DeadLetterSummary]) -> Table:
    """Too narrow for the table (80 columns, a pipe): one block per dead letter."""
    return blocks("Dead letters", [(str(r.id), _dead_letter_lines(r)) for r in rows])


def _dead_letter_lines(r: DeadLetterSummary) -> list[str]:
    attempts = counted(r.attempts, "attempt")
    return [
        f"{r.event_name}, event_id {r.event_id}",
        f"pixel {r.pixel_id}",
        f"{r.reason}, Meta error {_meta_error(r)}, {attempts}",
        f"dead at {_when(r.dead_at)}",
    ]


@dlq_app.command("show")
def show_command(
    dlq_id: Annotated[int, typer.Argument(help="Dead-letter id (from `dlq list`).")],
    config: ConfigOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Show one dead letter: the hashed wire event, Meta's answer, every attempt."""
    from capirelay.ops import dlq

    detail = _with_outbox(existing_storage_url(config, storage), lambda o: dlq.show(o, dlq_id))
    if detail is None:
        error(f"no dead letter with id {dlq_id}")
        raise typer.Exit(1)
    s = detail.summary
    console.print(
        f"[bold]dead letter {s.id}[/bold]: {s.event_name} {s.event_id} on pixel {s.pixel_id}"
    )
    console.print(
        f"reason: {s.reason}   dead at: {_when(s.dead_at)}   deadline: {_when(s.deadline)}"
    )
    if s.code is not None:
        from capirelay.graph import explain

        console.print(
            f"Meta: code {s.code} subcode {s.subcode} fbtrace_id {s.fbtrace_id}: {s.message}",
            highlight=False,
        )
        console.print(f"what to do: {explain(s.code, s.subcode)}", highlight=False)
    document: dict[str, Any] = {
        "event": detail.event,
        "error": detail.error,
        "attempts": detail.attempts,
        "test_event_code": detail.test_event_code,
    }
    console.print_json(orjson.dumps(document).decode())


def _ids_or_filter(
    ids: list[int] | None, flt: DLQFilter, *, everything_ok: bool
) -> list[int] | DLQFilter:
    if ids:
        return ids
    if flt == DLQFilter() and not everything_ok:
        err_console.print("[red]give ids, a filter, or --all[/red]")
        raise typer.Exit(2)
    return flt


@dlq_app.command("replay")
def replay_command(
    ids: IdsArg = None,
    config: ConfigOpt = None,
    storage: StorageOpt = None,
    pixel: PixelOpt = None,
    event_name: EventOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    all_: AllOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Judge only; move nothing.")] = False,
) -> None:
    """Re-validate and re-queue dead letters that are still inside their deadline."""
    from capirelay.ops import dlq

    target = _ids_or_filter(
        ids, _filter(pixel, event_name, reason, since, until), everything_ok=all_
    )
    report = _with_outbox(
        existing_storage_url(config, storage),
        lambda o: dlq.replay(o, target, now=time.time(), dry_run=dry_run, actor=_cli_actor()),
    )
    verb = "would re-queue" if dry_run else "re-queued"
    console.print(f"{verb}: {len(report.requeued)}")
    console.print(f"past their deadline (left in the DLQ): {len(report.expired)}")
    for letter_id, problems in report.still_invalid.items():
        for problem in problems:
            console.print(f"still invalid {letter_id}: {problem.field}: {problem.message}")
    if report.not_found:
        console.print(f"not found: {', '.join(map(str, report.not_found))}")
    if report.duplicate:
        held = ", ".join(map(str, report.duplicate))
        console.print(f"duplicates (event already queued or sent; left in the DLQ): {held}")
    if report.still_invalid or report.not_found:
        raise typer.Exit(1)


@dlq_app.command("purge")
def purge_command(
    ids: IdsArg = None,
    config: ConfigOpt = None,
    storage: StorageOpt = None,
    pixel: PixelOpt = None,
    event_name: EventOpt = None,
    reason: ReasonOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    all_: AllOpt = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm a filter-wide purge.")] = False,
) -> None:
    """Delete dead letters for good."""
    from capirelay.ops import dlq

    target = _ids_or_filter(
        ids, _filter(pixel, event_name, reason, since, until), everything_ok=all_
    )
    if isinstance(target, DLQFilter) and not yes:
        err_console.print("[red]a purge by filter deletes every match: add --yes to confirm[/red]")
        raise typer.Exit(2)
    count = _with_outbox(
        existing_storage_url(config, storage), lambda o: dlq.purge(o, target, actor=_cli_actor())
    )
    console.print(f"purged: {count}")


@dlq_app.command("audit")
def audit_command(
    config: ConfigOpt = None,
    storage: StorageOpt = None,
    limit: Annotated[int, typer.Option("--limit", help="Most records shown.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Who replayed or purged dead letters, when, with which filter, and how many."""
    records = _with_outbox(
        existing_storage_url(config, storage), lambda o: o.audit_log(limit=limit)
    )
    if as_json:
        console.print_json(orjson.dumps([dataclasses.asdict(r) for r in records]).decode())
        return
    if not records:
        console.print("no replay or purge recorded yet")
        return
    table = Table("when (UTC)", "who", "action", "target", "count", "from")
    for record in records:
        table.add_row(
            _when(record.at), record.actor, record.action, record.target,
            str(record.count), record.origin,
        )  # fmt: skip
    if fits(console, table):
        console.print(table)
        return
    # Too narrow (80 columns, a pipe): one block per record, every value whole.
    console.print(blocks(None, [(_when(r.at), _audit_lines(r)) for r in records]))


def _audit_lines(record: AuditRecord) -> list[str]:
    letters = counted(record.count, "dead letter")
    return [
        f"{record.action} of {letters} by {record.actor}, from {record.origin}",
        f"target {record.target}",
    ]


def _cli_actor() -> str:
    """The operating-system user running the command (the audit trail's "who")."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"
