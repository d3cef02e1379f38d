"""Dedup and the order ledger together, every backend against the in-memory outbox (the
reference model): generated calls of events that share event ids and order ids in every
arrangement, sent one after the other or at once (on PostgreSQL the calls of one
event-loop iteration go out as one statement group), must get the same statuses and
record the same orders.  (The case that found a defect: the browser's Purchase without
an order id and the shop's with one, sharing an event id in one group.)"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from outbox_data import T0, make_event

from capirelay.outbox import Outbox, SQLiteOutbox
from capirelay.outbox.base import EnqueueStatus, NewEvent
from capirelay.outbox.memory import InMemoryOutbox
from capirelay.outbox.postgres import PostgresOutbox

# (event id, order id or None): three of each, so that they meet often.
EVENT = st.tuples(st.sampled_from("abc"), st.sampled_from([None, None, "k1", "k2", "k3"]))
CALLS = st.lists(st.lists(EVENT, min_size=1, max_size=5), min_size=1, max_size=3)


def _events(run: str, call: list[tuple[str, str | None]]) -> list[NewEvent]:
    out = []
    for event_id, order in call:
        event = make_event(f"{run}-{event_id}")
        if order is not None:
            event = replace(event, order_key=f"{run}-{order}".encode().ljust(16, b".")[:16])
        out.append(event)
    return out


async def _send(
    box: Outbox, calls: list[list[NewEvent]], at_once: bool
) -> tuple[list[list[EnqueueStatus]], int]:
    before = await box.order_ledger_size()
    if at_once:
        statuses = list(await asyncio.gather(*(box.enqueue(c, now=T0) for c in calls)))
    else:
        statuses = [await box.enqueue(c, now=T0) for c in calls]
    return statuses, await box.order_ledger_size() - before


def test_every_backend_answers_as_the_model(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    loop = asyncio.new_event_loop()
    box: Outbox
    if backend == "postgres":
        box = PostgresOutbox(request.getfixturevalue("postgres_url"), pool_size=4, listen=False)
    else:
        box = SQLiteOutbox(tmp_path / "outbox.db")
    loop.run_until_complete(box.open())

    @settings(
        max_examples=80,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(calls=CALLS, at_once=st.booleans())
    def same_as_the_model(calls: list[list[tuple[str, str | None]]], at_once: bool) -> None:
        run = uuid.uuid4().hex[:8]  # a fresh set of ids and orders for each example
        sent = [_events(run, call) for call in calls]
        model = InMemoryOutbox()
        loop.run_until_complete(model.open())
        expected = loop.run_until_complete(_send(model, sent, at_once))
        assert loop.run_until_complete(_send(box, sent, at_once)) == expected

    try:
        same_as_the_model()
    finally:
        loop.run_until_complete(box.close())
        loop.close()
