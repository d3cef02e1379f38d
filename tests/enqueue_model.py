"""The enqueue model check shared by the backends' tests: generated calls of events that
share event ids and order ids in every arrangement, sent one after the other or at once
(on PostgreSQL the calls of one event-loop iteration go out as one statement group),
must get the statuses and order-ledger entries of the in-memory outbox (the reference
model)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capirelay.outbox import Outbox
from capirelay.outbox.base import EnqueueStatus, NewEvent
from capirelay.outbox.memory import InMemoryOutbox

T0 = 1_800_000_000.0

# (event id, order id or None): three of each, so that they meet often.
EVENT = st.tuples(st.sampled_from("abc"), st.sampled_from([None, None, "k1", "k2", "k3"]))
CALLS = st.lists(st.lists(EVENT, min_size=1, max_size=5), min_size=1, max_size=3)


def calls_of(
    run: str, calls: list[list[tuple[str, str | None]]], make: Callable[[str], NewEvent]
) -> list[list[NewEvent]]:
    """The generated ``calls`` as events, ids and orders prefixed with ``run``."""
    out = []
    for call in calls:
        events = []
        for event_id, order in call:
            event = make(f"{run}-{event_id}")
            if order is not None:
                event = replace(event, order_key=f"{run}-{order}".encode().ljust(16, b".")[:16])
            events.append(event)
        out.append(events)
    return out


async def send(
    box: Outbox, calls: list[list[NewEvent]], at_once: bool
) -> tuple[list[list[EnqueueStatus]], int]:
    """Each call's statuses and how many order-ledger entries the calls added."""
    before = await box.order_ledger_size()
    if at_once:
        statuses = list(await asyncio.gather(*(box.enqueue(c, now=T0) for c in calls)))
    else:
        statuses = [await box.enqueue(c, now=T0) for c in calls]
    return statuses, await box.order_ledger_size() - before


def answers_as_the_model(
    box: Outbox,
    loop: asyncio.AbstractEventLoop,
    make: Callable[[str], NewEvent],
    max_examples: int,
) -> None:
    """Run the generated calls through ``box`` (open, on ``loop``) and the model."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(calls=CALLS, at_once=st.booleans())
    def same_as_the_model(calls: list[list[tuple[str, str | None]]], at_once: bool) -> None:
        sent = calls_of(uuid.uuid4().hex[:8], calls, make)  # fresh ids for each example
        model = InMemoryOutbox()
        loop.run_until_complete(model.open())
        expected = loop.run_until_complete(send(model, sent, at_once))
        assert loop.run_until_complete(send(box, sent, at_once)) == expected

    same_as_the_model()
