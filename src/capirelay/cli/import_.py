"""``capirelay import FILE --pixel ID``: offline and historical conversions, in bulk.

Streams a CSV or JSON Lines file through :class:`capirelay.importer.Importer` into the
configured storage (SQLite or PostgreSQL, also while a gateway runs on it; the
gateway delivers what was queued).  On a terminal a Rich progress bar shows rows/s
and the time left; otherwise a plain progress line goes to stderr every few seconds.
The last line on stdout is ``N queued, N duplicate, N rejected``; rejected rows go to
``FILE.rejected.csv`` (line number, event id, problems: never a value from the row).
``--dry-run`` prints the counts and the file's predicted match quality and writes
nothing.  Exit 0 when every row was accepted, 1 when some were rejected, 2 when the
file, the mapping or the configuration cannot be used.
"""

from __future__ import annotations

import asyncio
import csv
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from capirelay.cli._output import err_console, error
from capirelay.cli.storage import ConfigOpt, StorageOpt
from capirelay.importer import (
    FORMATS,
    Importer,
    ImportFileError,
    ImportSummary,
    read_rows,
)
from capirelay.problems import Problem

__all__ = ["import_command"]

console = Console(soft_wrap=True)
PLAIN_PROGRESS_SECONDS = 5.0


def _fail(message: str) -> typer.Exit:
    error(str(message))
    return typer.Exit(2)


class _Rejects:
    """The rejected-rows file, created on the first reject: line, event_id, problems."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._writer: Any = None

    def __call__(self, line: int, event_id: str, problems: list[Problem]) -> None:
        if self.path is None:
            return
        if self._writer is None:
            self._file = self.path.open("w", encoding="utf-8", newline="")
            self._writer = csv.writer(self._file)
            self._writer.writerow(["line", "event_id", "problems"])
        text = "; ".join(
            f"{p.field or 'row'}: {p.message}" for p in problems if p.severity == "error"
        )
        self._writer.writerow([line, event_id, text])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _PlainProgress:
    def __init__(self, raw: IO[bytes], size: int) -> None:
        self.raw, self.size = raw, size
        self.started = self.last = time.monotonic()

    def __call__(self, rows: int) -> None:
        now = time.monotonic()
        if now - self.last < PLAIN_PROGRESS_SECONDS:
            return
        self.last = now
        done = self.raw.tell() / self.size if self.size else 1.0
        elapsed = now - self.started
        rate = rows / elapsed if elapsed else 0.0
        eta = elapsed * (1 - done) / done if done else 0.0
        print(
            f"import: {rows:,} rows ({done:.0%}), {rate:,.0f} rows/s, about {eta:,.0f} s left",
            file=sys.stderr,
            flush=True,
        )


def _format_of(path: Path, given: str | None) -> str:
    if given:
        if given not in FORMATS:
            raise _fail(f"--format must be one of {', '.join(FORMATS)}")
        return given
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise _fail(f"cannot tell the format of {path.name}; add --format csv or --format jsonl")


def import_command(
    file: Annotated[Path, typer.Argument(help="CSV (with a header) or JSON Lines file.")],
    pixel: Annotated[str, typer.Option("--pixel", help="The pixel to send the events to.")],
    mapping: Annotated[
        Path | None, typer.Option("--mapping", help="TOML+JMESPath mapping for other layouts.")
    ] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="csv or jsonl.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count and predict match quality; write nothing.")
    ] = False,
    action_source: Annotated[
        str | None,
        typer.Option("--action-source", help="For rows without one (e.g. physical_store)."),
    ] = None,
    test_event_code: Annotated[
        str | None, typer.Option("--test-event-code", help="Send as test events.")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Extra processes preparing rows, for idle cores (default 0: this one only).",
        ),
    ] = 0,
    rejected: Annotated[
        Path | None, typer.Option("--rejected", help="Rejected rows file (FILE.rejected.csv).")
    ] = None,
    config: ConfigOpt = None,
    storage: StorageOpt = None,
) -> None:
    """Import offline or historical conversions from a CSV or JSON Lines file."""
    from capirelay.config import ConfigError, load_settings

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    pixel_settings = settings.pixels.get(pixel)
    if pixel_settings is None:
        raise _fail(f"pixel {pixel} is not configured; add [pixels.{pixel}] to the config")
    kind = _format_of(file, fmt)
    event_mapping = None
    if mapping is not None:
        from capirelay.sources.mapping import MappingLoadError, load_mapping

        try:
            event_mapping = load_mapping(mapping)
        except (MappingLoadError, OSError) as exc:
            raise _fail(str(exc)) from None
    importer = Importer(
        pixel_id=pixel,
        pixel=pixel_settings,
        mapping=event_mapping,
        action_source=action_source,
        test_event_code=test_event_code or pixel_settings.test_event_code,
        max_future_skew=settings.max_future_skew,
    )
    try:
        raw = file.open("rb")
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror}") from None
    rejects = _Rejects(None if dry_run else rejected or file.with_name(file.name + ".rejected.csv"))
    try:
        rows = read_rows(raw, kind if mapping is None or kind == "jsonl" else "csv-mapped")
        summary = _run(importer, raw, rows, rejects, dry_run, storage or settings.storage, workers)
    except ImportFileError as exc:
        raise _fail(f"{file}: {exc}") from None
    finally:
        raw.close()
        rejects.close()
    _report(summary, dry_run, rejects.path if summary.rejected else None)
    if summary.rejected:
        raise typer.Exit(1)


def _run(
    importer: Importer,
    raw: IO[bytes],
    rows: Iterator[Any],
    rejects: _Rejects,
    dry_run: bool,
    url: str,
    workers: int,
) -> ImportSummary:
    size = Path(raw.name).stat().st_size if isinstance(raw.name, str) else 0
    if sys.stderr.isatty():
        with Progress(
            TextColumn("[bold]import"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rows]:,} rows · {task.fields[rate]:,.0f} rows/s"),
            TimeRemainingColumn(),
            console=err_console,
        ) as bar:
            task = bar.add_task("import", total=size or None, rows=0, rate=0.0)
            started = time.monotonic()

            def progress(count: int) -> None:
                elapsed = time.monotonic() - started
                rate = count / elapsed if elapsed else 0.0
                bar.update(task, completed=raw.tell(), rows=count, rate=rate)

            return _execute(importer, rows, rejects, progress, dry_run, url, workers)
    return _execute(importer, rows, rejects, _PlainProgress(raw, size), dry_run, url, workers)


def _execute(
    importer: Importer,
    rows: Iterator[Any],
    rejects: _Rejects,
    progress: Any,
    dry_run: bool,
    url: str,
    workers: int,
) -> ImportSummary:
    if dry_run:
        return importer.dry_run(rows, rejects, progress)
    from capirelay.outbox import open_outbox

    try:
        outbox = open_outbox(url)
    except ValueError as exc:  # a storage URL that names no backend
        raise _fail(str(exc)) from None

    async def run() -> ImportSummary:
        await outbox.open()
        try:
            return await importer.run(outbox, rows, rejects, progress, workers=workers)
        finally:
            await outbox.close()

    return asyncio.run(run())


def _report(summary: ImportSummary, dry_run: bool, rejected: Path | None) -> None:
    if summary.reasons:
        reasons = ", ".join(f"{code} {n}" for code, n in sorted(summary.reasons.items()))
        # Problems, not rows: one rejected row can have several (the counts do not add up
        # to the rejected rows, which read as a contradiction).
        err_console.print(
            f"problems of the rejected rows (a row can have several): {reasons}", markup=False
        )
    if rejected is not None:
        err_console.print(f"rejected rows and their problems: {rejected}", markup=False)
    if dry_run and summary.quality is not None:
        quality = summary.quality
        console.print(f"predicted match quality: {quality.overall.score:.1f}/10")
        for name, q in quality.by_event.items():
            console.print(f"  {name}: {q.count} events, {q.score:.1f}/10")
        for hint in quality.hints:
            console.print(f"  hint: {hint}")
    console.print(summary.line(dry_run=dry_run), highlight=False)
