"""Shared test data for the outbox tests: a fixed clock, an event factory, and a way to
hold the SQLite writer thread."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import orjson

from capirelay.outbox import NewEvent
from capirelay.outbox.sqlite.writer import WriteOp

T0 = 1_800_000_000.0  # a fixed "now" so every time in these tests is explicit
WEEK = 7 * 86400


def make_event(
    event_id: str,
    *,
    pixel_id: str = "111",
    event_name: str = "Purchase",
    deadline: float | None = None,
    test_event_code: str | None = None,
) -> NewEvent:
    event_time = int(T0)
    payload = {"event_name": event_name, "event_id": event_id, "event_time": event_time}
    return NewEvent(
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=event_id,
        payload=orjson.dumps(payload),
        event_time=event_time,
        deadline=deadline if deadline is not None else event_time + WEEK,
        test_event_code=test_event_code,
    )


def on_the_writer_thread(box: Any, fn: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any]:
    """Run ``fn`` in a group of the SQLite writer thread's own (``submit``), for a ``fn``
    that blocks to hold the writer: a write handed over with the event loop's iteration
    (``_write``) may be committed on the loop's own thread, and would block the test's
    loop instead."""
    writer = box._writer
    assert writer is not None
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    writer.submit(WriteOp(fn, loop, future))
    return future
