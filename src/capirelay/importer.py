"""Bulk import of offline and historical conversions (``capirelay import``).

Store sales, call-centre orders, CRM outcomes and the orders of an outage go to the
Conversions API in bulk from exports.  This module streams such a file (CSV or JSON
Lines) row by row, turns each row into a CAPI-shaped event (the default columns
below, or a TOML + JMESPath mapping file), and sends every event through the same
pipeline as ``POST /v1/events`` (:func:`capirelay.ingest.prepare_event`: normalize →
hash → validate, with a stable event id) and the outbox's dedup, in batches of
2,500, straight into the configured storage, from where a gateway delivers them.

Memory stays bounded by the batch, whatever the file's size: rows are read
lazily, a batch is prepared while the previous one is being written, and nothing
of a row outlives its batch.  Rows come out in three counts: *queued*,
*duplicate* (the outbox already holds or recently sent that event: re-running a
file queues nothing new) and *rejected* (with their problems, e.g. an
``event_time`` outside Meta's window: 7 days, 62 for ``physical_store``).

Default columns (the library's field names; a header row is required)::

    event_name, event_time, event_id, action_source, email, phone, first_name,
    last_name, city, state, zip_code, country, external_id, value, currency, order_id

``event_time`` is Unix seconds or ISO 8601 (UTC when no offset is given).  A JSON
Lines file without a mapping takes the same keys per object (plus optional
``user_data``/``custom_data`` objects merged in).  A CSV row with more or fewer fields
than the header (an unquoted comma, a stray or missing cell) is rejected whole, by
line and count.  Rejected rows are reported by line number with their problems; no
identifier is ever copied out of the file.
"""

from __future__ import annotations

import asyncio
import csv
import io
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import IO, Any, Final

import orjson

from capirelay.config import PixelSettings
from capirelay.ingest import PreparedEvent, prepare_event
from capirelay.ops.quality import QualityReport, predict_match_quality
from capirelay.outbox.base import EnqueueStatus, NewEvent, Outbox
from capirelay.outbox.receipts import duplicate_receipt
from capirelay.problems import Problem, Severity, error
from capirelay.sources.mapping import EventMapping

__all__ = [
    "DEFAULT_COLUMNS",
    "FORMATS",
    "ImportFileError",
    "ImportSummary",
    "Importer",
    "MisshapenRow",
    "parse_time",
    "read_rows",
]

FORMATS: Final = ("csv", "jsonl")
SOURCE: Final = "import"
BATCH: Final = 2500  # rows per enqueue: 400 durable commits per million rows
USER_COLUMNS: Final = {
    "email": "email",
    "phone": "phone",
    "first_name": "first_name",
    "last_name": "last_name",
    "city": "city",
    "state": "state",
    "zip_code": "zip_code",
    "country": "country",
    "external_id": "external_id",
    # Website rows need these (Meta requires them for action_source=website).
    "client_ip_address": "client_ip_address",
    "client_user_agent": "client_user_agent",
}
EVENT_COLUMNS: Final = ("event_name", "event_time", "event_id", "action_source", "event_source_url")
CUSTOM_COLUMNS: Final = ("value", "currency", "order_id")
DEFAULT_COLUMNS: Final = (*EVENT_COLUMNS, *USER_COLUMNS, *CUSTOM_COLUMNS)
_NESTED: Final = ("user_data", "custom_data")


class ImportFileError(ValueError):
    """The file cannot be imported at all (bad header, unreadable); names the fix."""


@dataclass(frozen=True, slots=True)
class MisshapenRow:
    """A CSV row with more or fewer fields than the header has columns.

    Its cells cannot be trusted to sit under their columns (an unquoted comma in
    ``Smith, Jr.`` moves every later cell one to the right), so the row is refused
    whole, by its line and its count, instead of being queued with shifted values
    or reported for whichever field the shift happened to break.
    """

    line: int
    fields: int
    columns: int

    def problem(self) -> Problem:
        noun = "field" if self.fields == 1 else "fields"
        return error(
            "field_count",
            "",
            f"line {self.line}: {self.fields} {noun}, the header has {self.columns}",
        )


# (line number, the row: a dict of columns, a JSON value, or a MisshapenRow)
Row = tuple[int, Any]


def read_rows(stream: IO[bytes], fmt: str) -> Iterator[Row]:
    """The rows of a CSV (with a header) or JSON Lines file, lazily, with their line numbers.

    A CSV header naming a column that is not a default column raises
    :class:`ImportFileError` unless ``fmt`` is ``"csv-mapped"`` (a mapping reads any
    columns).  A CSV row whose field count differs from the header's is yielded as a
    :class:`MisshapenRow` (the importer rejects it; the other rows are unaffected), but
    for empty cells past the header's width (a trailing comma), which are left out.
    A JSON Lines line that is not valid JSON is yielded as ``None``.
    """
    if fmt == "jsonl":
        for number, line in enumerate(stream, start=1):
            if line.strip():
                try:
                    yield number, orjson.loads(line)
                except orjson.JSONDecodeError:
                    yield number, None
        return
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        reader = csv.reader(text)
        header = next(reader, None)
        if header is None:
            raise ImportFileError("the file is empty: a CSV import needs a header row")
        columns = [name.strip() for name in header]
        if fmt == "csv":
            _check_header(columns)
        width = len(columns)
        for row in reader:
            if not row:
                continue
            if len(row) > width and not any(cell.strip() for cell in row[width:]):
                # Empty cells past the header's width (a trailing comma, as some exporters
                # end every line) shift nothing: read the row without them.
                row = row[:width]
            if len(row) != width:
                yield reader.line_num, MisshapenRow(reader.line_num, len(row), width)
            else:
                yield reader.line_num, dict(zip(columns, row, strict=True))
    finally:
        # The caller owns the file (and reads its position for progress): do not close it.
        text.detach()


def _check_header(columns: list[str]) -> None:
    unknown = [c for c in columns if c not in DEFAULT_COLUMNS]
    if unknown:
        raise ImportFileError(
            f"unknown column(s) {', '.join(unknown)}: the default columns are "
            f"{', '.join(DEFAULT_COLUMNS)}; rename them, or describe your layout in a "
            "mapping file (--mapping MAPPING.toml)"
        )
    missing = [c for c in ("event_name", "event_time") if c not in columns]
    if missing:
        raise ImportFileError(f"the header lacks {', '.join(missing)}; add the column(s)")


def parse_time(value: Any) -> int:
    """Unix seconds (a number or digits) or ISO 8601 (UTC when no offset) → Unix seconds."""
    if isinstance(value, bool):
        raise ValueError("event_time must be Unix seconds or ISO 8601")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            pass
        else:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return int(moment.timestamp())
    raise ValueError(
        "event_time must be Unix seconds (1764600000) or ISO 8601 (2026-12-01T14:05:00Z)"
    )


def _flat_to_event(row: Mapping[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """A row of default columns → a CAPI-shaped raw event (empty cells left out)."""
    event: dict[str, Any] = {}
    user: dict[str, Any] = {}
    custom: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or value == "":
            continue
        if key in USER_COLUMNS:
            user[USER_COLUMNS[key]] = value
        elif key in EVENT_COLUMNS:
            event[key] = value
        elif key == "value":
            try:
                custom["value"] = float(value)
            except (TypeError, ValueError):
                problems.append(
                    error("invalid_value", "custom_data.value", "value must be a number (12.50)")
                )
        elif key in CUSTOM_COLUMNS:
            custom[key] = str(value)
        elif key in _NESTED and isinstance(value, dict):
            (user if key == "user_data" else custom).update(value)
        else:
            problems.append(
                error(
                    "unknown_field",
                    key,
                    f"{key}: not a default column; use {', '.join(DEFAULT_COLUMNS)} "
                    "or a mapping file (--mapping)",
                )
            )
    if user:
        event["user_data"] = user
    if custom:
        event["custom_data"] = custom
    return event


@dataclass(slots=True)
class ImportSummary:
    rows: int = 0
    queued: int = 0
    duplicate: int = 0
    rejected: int = 0
    accepted: int = 0  # passed the pipeline (queued + duplicate; or, dry run, would queue)
    quality: QualityReport | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    def line(self, *, dry_run: bool = False) -> str:
        if dry_run:
            return f"{self.accepted} would be queued, {self.rejected} rejected (dry run)"
        return f"{self.queued} queued, {self.duplicate} duplicate, {self.rejected} rejected"


RejectSink = Callable[[int, str, list[Problem]], None]
Progress = Callable[[int], None]


class Importer:
    """One import: a pixel, an optional mapping, and what every event gets by default."""

    def __init__(
        self,
        *,
        pixel_id: str,
        pixel: PixelSettings,
        mapping: EventMapping | None = None,
        action_source: str | None = None,
        test_event_code: str | None = None,
        max_future_skew: int = 300,
        clock: Callable[[], float] | None = None,
        batch_size: int = BATCH,
    ) -> None:
        self.pixel_id = pixel_id
        self.pixel = pixel
        self.mapping = mapping
        self.action_source = action_source
        self.test_event_code = test_event_code
        self.max_future_skew = max_future_skew
        self.clock = clock or time.time
        self.batch_size = batch_size

    # ------------------------------------------------------------- one row

    def events_of(self, row: Any, now: float) -> list[tuple[dict[str, Any], list[Problem]]]:
        """The raw events a row stands for, each with the problems found making it."""
        if row is None:
            return [({}, [error("invalid_json", "", "this line is not valid JSON")])]
        if isinstance(row, MisshapenRow):
            return [({}, [row.problem()])]
        if self.mapping is not None:
            mapped = self.mapping.apply(row, now=now)
            if not mapped:
                return [({}, [error("no_rule", "", "no rule of the mapping matches this row")])]
            pairs = [(m.event, list(m.problems)) for m in mapped]
        elif isinstance(row, Mapping):
            problems: list[Problem] = []
            pairs = [(_flat_to_event(row, problems), problems)]
        else:
            return [({}, [error("invalid_type", "", "each line must be a JSON object")])]
        for event, problems in pairs:
            self._complete(event, problems)
        return pairs

    def _complete(self, event: dict[str, Any], problems: list[Problem]) -> None:
        if self.action_source and not event.get("action_source"):
            event["action_source"] = self.action_source
        when = event.get("event_time")
        if when is None or when == "":
            problems.append(error("missing_field", "event_time", "event_time is required"))
            return
        try:
            event["event_time"] = parse_time(when)
        except ValueError as exc:
            problems.append(error("invalid_value", "event_time", str(exc)))

    def prepare(self, line: int, row: Any, now: float) -> list[PreparedEvent]:
        prepared = []
        for event, problems in self.events_of(row, now):
            if any(p.severity == Severity.ERROR for p in problems):
                given = event.get("event_id")
                prepared.append(
                    PreparedEvent(None, given if isinstance(given, str) else "", problems)
                )
                continue
            item = prepare_event(
                event,
                pixel_id=self.pixel_id,
                pixel=self.pixel,
                now=now,
                test_event_code=self.test_event_code,
                source=SOURCE,
                max_future_skew=self.max_future_skew,
            )
            if problems or item.problems:
                item = PreparedEvent(
                    item.new_event, item.event_id, [*problems, *import_advice(item.problems)]
                )
            prepared.append(item)
        return prepared

    # ------------------------------------------------------------ the file

    def prepare_chunk(self, chunk: list[Row], now: float) -> list[tuple[int, PreparedEvent]]:
        return [(line, item) for line, row in chunk for item in self.prepare(line, row, now)]

    def _absorb(
        self,
        items: list[tuple[int, PreparedEvent]],
        rows: int,
        summary: ImportSummary,
        reject: RejectSink,
    ) -> list[NewEvent]:
        summary.rows += rows
        batch: list[NewEvent] = []
        for line, item in items:
            if item.new_event is None:
                summary.rejected += 1
                for problem in item.problems:
                    if problem.severity == Severity.ERROR:
                        summary.reasons[problem.code] = summary.reasons.get(problem.code, 0) + 1
                reject(line, item.event_id, item.problems)
            else:
                summary.accepted += 1
                batch.append(item.new_event)
        return batch

    def _chunks(self, rows: Iterable[Row]) -> Iterator[list[Row]]:
        chunk: list[Row] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= self.batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _batches(
        self, rows: Iterable[Row], summary: ImportSummary, reject: RejectSink, progress: Progress
    ) -> Iterator[list[NewEvent]]:
        for chunk in self._chunks(rows):
            items = self.prepare_chunk(chunk, self.clock())
            batch = self._absorb(items, len(chunk), summary, reject)
            progress(summary.rows)
            if batch:
                yield batch

    async def run(
        self,
        outbox: Outbox,
        rows: Iterable[Row],
        reject: RejectSink,
        progress: Progress,
        *,
        workers: int = 0,
    ) -> ImportSummary:
        """Queue the file's events.  With ``workers`` > 1, that many processes prepare
        batches while this one reads the file and writes; otherwise a batch is prepared
        while the previous one is written.  At most ``workers + 1`` batches are in
        memory at once, so memory stays bounded either way."""
        if workers > 1:
            return await self._run_pool(outbox, rows, reject, progress, workers)
        summary = ImportSummary()
        pending: asyncio.Task[None] | None = None
        for batch in self._batches(rows, summary, reject, progress):
            if pending is not None:
                await pending
            pending = asyncio.create_task(self._write(outbox, batch, summary))
            await asyncio.sleep(0)  # let the write start before preparing the next batch
        if pending is not None:
            await pending
        return summary

    async def _run_pool(
        self,
        outbox: Outbox,
        rows: Iterable[Row],
        reject: RejectSink,
        progress: Progress,
        workers: int,
    ) -> ImportSummary:
        summary = ImportSummary()
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(self,)
        ) as pool:
            in_flight: deque[tuple[int, asyncio.Future[list[tuple[int, PreparedEvent]]]]]
            in_flight = deque()

            async def settle_oldest() -> None:
                count, future = in_flight.popleft()
                batch = self._absorb(await future, count, summary, reject)
                if batch:
                    await self._write(outbox, batch, summary)
                progress(summary.rows)

            for chunk in self._chunks(rows):
                future = loop.run_in_executor(pool, _prepare_in_worker, chunk, self.clock())
                in_flight.append((len(chunk), future))
                if len(in_flight) > workers:
                    await settle_oldest()
            while in_flight:
                await settle_oldest()
        return summary

    async def _write(self, outbox: Outbox, batch: list[NewEvent], summary: ImportSummary) -> None:
        now = self.clock()
        statuses = await outbox.enqueue(batch, now=now)
        duplicates = [
            duplicate_receipt(
                pixel_id=e.pixel_id,
                event_name=e.event_name,
                event_id=e.event_id,
                source=SOURCE,
                payload=e.payload,
                test_event_code=e.test_event_code,
                now=now,
            )
            for e, status in zip(batch, statuses, strict=True)
            if status == EnqueueStatus.DUPLICATE
        ]
        summary.duplicate += len(duplicates)
        summary.queued += len(batch) - len(duplicates)
        if duplicates:
            await outbox.record_receipts(duplicates)

    def dry_run(self, rows: Iterable[Row], reject: RejectSink, progress: Progress) -> ImportSummary:
        """Counts and the predicted match quality of the file; nothing is written."""
        summary = ImportSummary()

        def payloads() -> Iterator[dict[str, Any]]:
            for batch in self._batches(rows, summary, reject, progress):
                for event in batch:
                    yield orjson.loads(event.payload)

        summary.quality = predict_match_quality(payloads())
        return summary


# Validation's event_too_old says "drop the event or send it sooner": a file's row
# cannot be sent sooner, its date is history.
_TOO_OLD_FOR_AN_IMPORT = (
    "; Meta accepts no event older than 7 days (62 for action_source physical_store, "
    "sales in a store), so this row cannot be sent"
)


def import_advice(problems: list[Problem]) -> list[Problem]:
    """``problems`` with the ``event_too_old`` advice an import can follow."""
    return [
        replace(p, message=p.message.partition(";")[0] + _TOO_OLD_FOR_AN_IMPORT)
        if p.code == "event_too_old"
        else p
        for p in problems
    ]


_worker_importer: Importer | None = None


def _init_worker(importer: Importer) -> None:
    global _worker_importer
    _worker_importer = importer


def _prepare_in_worker(chunk: list[Row], now: float) -> list[tuple[int, PreparedEvent]]:
    assert _worker_importer is not None
    return _worker_importer.prepare_chunk(chunk, now)
