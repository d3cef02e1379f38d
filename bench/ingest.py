"""Ingest hot path, stage by stage, in one process: where each event's microseconds go.

The events are the ones ``bench/gateway.py`` sends (website Purchases with a
raw email, phone, IP, user agent and ``_fbp`` cookie, each distinct), so the
figures explain that benchmark's batched ``/v1/events`` row.  Events go through
100 at a time (one request), each stage on the output of the stage before it;
the best of ``--repeat`` runs counts:

1. ``prepare_wire``: parse, normalize and hash the identifiers (the fast path),
   next to ``Event.model_validate(raw).to_wire()``, the model path it replaces;
2. ``derive_event_id``: only for events that come without an id;
3. ``validate_event``: Meta's acceptance rules on the wire dict;
4. ``orjson.dumps``: the queued payload;
5. ``NewEvent`` with its deadline;
6. ``prepare_event``: all of it, as the route calls it.

``--outbox`` adds the SQLite outbox (a real file, ``synchronous=FULL``):
``enqueue`` of 100-event calls, one at a time and 8 concurrent (the group
commit's case), per event.  Run from the repository root::

    .venv/bin/python bench/ingest.py [--events 20000] [--repeat 5] [--outbox]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PIXEL, print_table
from capirelay.config import PixelSettings
from capirelay.events import Event, prepare_wire
from capirelay.ingest import derive_event_id, prepare_event
from capirelay.normalize import clear_caches
from capirelay.outbox import NewEvent, open_outbox
from capirelay.validate import deadline, validate_event
from gateway import raw_event

BATCH = 100  # events per request in bench/gateway.py's batched row
ISSUE_GOAL_EVENTS_PER_SECOND = 20_000

MODEL_PATH = "model path: Event.model_validate + to_wire"
WIRE = "1. prepare_wire (parse, normalize, hash)"
DERIVE = "2. derive_event_id (events without an id)"
VALIDATE = "3. validate_event"
ENCODE = "4. orjson.dumps(payload)"
NEW_EVENT = "5. NewEvent + deadline"
WHOLE = "6. prepare_event (1 + 3 + 4 + 5, as the route calls it)"
STAGES = (MODEL_PATH, WIRE, DERIVE, VALIDATE, ENCODE, NEW_EVENT, WHOLE)


def stage_seconds(
    events: Sequence[dict[str, Any]], now: int, pixel: PixelSettings
) -> dict[str, float]:
    """Seconds per stage over all events, run request by request as the route does.

    Each 100-event chunk goes through every stage in turn, on the previous
    stage's fresh output, so the data is as warm in the CPU caches as it is in
    the gateway (a stage run over all events at once would measure memory).
    """
    country = pixel.default_country
    totals = dict.fromkeys(STAGES, 0.0)
    clear_caches()  # cold hash caches, as distinct traffic would leave them
    for start in range(0, len(events), BATCH):
        chunk = events[start : start + BATCH]
        tick = time.perf_counter()
        for raw in chunk:
            Event.model_validate(raw).to_wire(country)
        tock = time.perf_counter()
        totals[MODEL_PATH] += tock - tick
        payloads = [prepare_wire(raw, default_country=country).payload for raw in chunk]
        tick = time.perf_counter()
        totals[WIRE] += tick - tock
        without_ids = [{k: v for k, v in p.items() if k != "event_id"} for p in payloads]
        tick = time.perf_counter()
        for payload in without_ids:
            derive_event_id(PIXEL, payload)
        tock = time.perf_counter()
        totals[DERIVE] += tock - tick
        for payload in payloads:
            validate_event(payload, now=now, max_future_skew=300)
        tick = time.perf_counter()
        totals[VALIDATE] += tick - tock
        encoded = [orjson.dumps(payload) for payload in payloads]
        tock = time.perf_counter()
        totals[ENCODE] += tock - tick
        for payload, body in zip(payloads, encoded, strict=True):
            NewEvent(
                PIXEL,
                payload["event_name"],
                payload["event_id"],
                body,
                int(payload["event_time"]),
                deadline(payload),
            )
        tick = time.perf_counter()
        totals[NEW_EVENT] += tick - tock
        for raw in chunk:
            prepare_event(
                raw,
                pixel_id=PIXEL,
                pixel=pixel,
                now=now,
                test_event_code=None,
                source="api",
                max_future_skew=300,
            )
        totals[WHOLE] += time.perf_counter() - tick
    return totals


def stage_rows(events: Sequence[dict[str, Any]], now: int, repeat: int) -> list[list[str]]:
    pixel = PixelSettings(default_country="US")
    runs = [stage_seconds(events, now, pixel) for _ in range(repeat)]
    best = {stage: min(run[stage] for run in runs) / len(events) for stage in STAGES}
    return [
        [
            stage,
            f"{1 / per_event:,.0f}",
            f"{per_event * 1e6:.2f}",
            f"{per_event / best[WHOLE]:.0%}",
            f"{best[MODEL_PATH] / per_event:.1f}x" if stage == WIRE else "",
        ]
        for stage, per_event in best.items()
    ]


def outbox_rows(events: Sequence[dict[str, Any]], now: int) -> list[list[str]]:
    pixel = PixelSettings(default_country="US")
    prepared = [
        prepare_event(
            raw,
            pixel_id=PIXEL,
            pixel=pixel,
            now=now,
            test_event_code=None,
            source="api",
            max_future_skew=300,
        ).new_event
        for raw in events
    ]
    queued = [event for event in prepared if event is not None]
    batches = [queued[i : i + BATCH] for i in range(0, len(queued), BATCH)]
    half = len(batches) // 2
    serial, concurrent = batches[:half], batches[half:]

    async def measure() -> tuple[float, float]:
        with tempfile.TemporaryDirectory(prefix="capirelay-bench-ingest-") as tmp:
            outbox = open_outbox(f"sqlite:///{Path(tmp) / 'outbox.db'}")
            await outbox.open()
            try:
                started = time.perf_counter()
                for batch in serial:
                    await outbox.enqueue(batch, now=now)
                one_at_a_time = time.perf_counter() - started
                started = time.perf_counter()
                for i in range(0, len(concurrent), 8):
                    group = concurrent[i : i + 8]
                    await asyncio.gather(*(outbox.enqueue(b, now=now) for b in group))
                eight_at_a_time = time.perf_counter() - started
            finally:
                await outbox.close()
        return one_at_a_time, eight_at_a_time

    one, eight = asyncio.run(measure())
    rows = []
    for name, seconds, calls in (
        ("enqueue, 100-event calls one at a time", one, serial),
        ("enqueue, 100-event calls 8 concurrent", eight, concurrent),
    ):
        count = sum(len(batch) for batch in calls)
        rows.append(
            [name, f"{count / seconds:,.0f}", f"{seconds / count * 1e6:.2f}",
             f"{seconds / len(calls) * 1e3:.2f}"]
        )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="distinct events per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per stage; the best counts")
    parser.add_argument("--outbox", action="store_true", help="also time SQLite enqueue")
    args = parser.parse_args()
    now = int(time.time())
    events = [raw_event(i, now) for i in range(args.events)]
    print(f"# capirelay ingest hot path ({args.events:,} events, best of {args.repeat})")
    rows = stage_rows(events, now, args.repeat)
    print_table(
        "Per stage (one core, in process)",
        ["stage", "events/s", "µs/event", "of prepare_event", "vs model path"],
        rows,
    )
    whole_us = float(rows[-1][2])
    budget_us = 1e6 / ISSUE_GOAL_EVENTS_PER_SECOND
    print(
        f"\nprepare_event uses {whole_us:.1f} µs of the {budget_us:.0f} µs per event that "
        f"{ISSUE_GOAL_EVENTS_PER_SECOND:,} events/s on one core allows "
        f"({whole_us / budget_us:.0%}); HTTP, JSON and the commit share the rest."
    )
    if args.outbox:
        print_table(
            "SQLite outbox enqueue (synchronous=FULL, real file)",
            ["call pattern", "events/s", "µs/event", "ms/call"],
            outbox_rows(events, now),
        )


if __name__ == "__main__":
    main()
