"""Bisection as a table: (batch, Meta's answers) -> (delivered, dead-lettered, requests).

:class:`capirelay.delivery.bisect.Bisection` is pure: it talks to Meta through a
``send`` callable.  Here ``send`` is a scripted Meta that refuses any request holding
a bad event (with that event's error) and accepts the rest; a script can also
override the n-th request's answer (an outage or throttle mid-bisection).  Each row
states which events end delivered, which dead-lettered (and whether their fbc was
dropped first), which were handed back with a request-level error, and the exact
requests sent.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capirelay.delivery.bisect import Bisection, without_fbc
from capirelay.graph import EventsResponse, GraphError, RetryClass
from capirelay.outbox import LeasedEvent

INVALID = (100, 2804050)  # an invalid event (event-level)
BAD_FBC = (100, 2804001)  # a malformed fbc: resent once without it
OUTAGE = GraphError(status=500, code=2, message="Service temporarily unavailable")
THROTTLE = GraphError(status=400, code=17, message="User request limit reached")


def event(index: int, *, fbc: bool = False) -> LeasedEvent:
    user_data: dict[str, object] = {"em": ["a" * 64]}
    if fbc:
        user_data["fbc"] = "not-a-click-id"
    payload = {"event_name": "Purchase", "event_id": f"e{index}", "user_data": user_data}
    return LeasedEvent(
        id=index,
        pixel_id="1",
        event_name="Purchase",
        event_id=f"e{index}",
        payload=orjson.dumps(payload),
        event_time=1_700_000_000,
        deadline=1_700_600_000.0,
        attempts=0,
        test_event_code=None,
        queued_at=1_700_000_000.0,
    )


def refusal(code: tuple[int, int], index: int) -> GraphError:
    return GraphError(
        status=400,
        code=code[0],
        subcode=code[1],
        message=f"Invalid parameter (event {index})",
    )


@dataclass
class ScriptedMeta:
    """Refuses a request holding a bad event with that event's error; ``script`` answers
    the n-th request (0-based) instead.  An event with ``fbc_only`` is bad only while its
    payload still has an fbc."""

    bad: dict[int, tuple[int, int]]
    fbc_only: frozenset[int] = frozenset()
    script: dict[int, GraphError] = field(default_factory=dict)
    requests: list[tuple[int, ...]] = field(default_factory=list)

    async def send(self, events: Sequence[LeasedEvent]) -> EventsResponse | GraphError:
        number = len(self.requests)
        self.requests.append(tuple(e.id for e in events))
        if number in self.script:
            return self.script[number]
        for e in events:
            has_fbc = "fbc" in orjson.loads(e.payload)["user_data"]
            if e.id in self.bad and (e.id not in self.fbc_only or has_fbc):
                return refusal(self.bad[e.id], e.id)
        return EventsResponse(events_received=len(events), fbtrace_id="T")

    def first_answer(self, events: Sequence[LeasedEvent]) -> GraphError:
        """Meta's answer to the whole batch, which started the bisection."""
        for e in events:
            if e.id in self.bad:
                return refusal(self.bad[e.id], e.id)
        return refusal(INVALID, events[0].id)  # a passing refusal naming an event


@dataclass
class Recorded:
    delivered: list[int] = field(default_factory=list)
    fbc_dropped: list[int] = field(default_factory=list)
    dead: list[tuple[int, int | None, bool]] = field(default_factory=list)
    refused: list[tuple[tuple[int, ...], RetryClass]] = field(default_factory=list)

    async def delivered_(self, events: Sequence[LeasedEvent], fbc_dropped: bool) -> None:
        self.delivered.extend(e.id for e in events)
        if fbc_dropped:
            self.fbc_dropped.extend(e.id for e in events)


class Sink:
    def __init__(self) -> None:
        self.out = Recorded()

    async def delivered(self, events: Sequence[LeasedEvent], *, fbc_dropped: bool = False) -> None:
        await self.out.delivered_(events, fbc_dropped)

    async def refused(self, events: list[LeasedEvent], err: GraphError) -> None:
        self.out.refused.append((tuple(e.id for e in events), err.retry_class))

    async def dead_lettered(
        self, event: LeasedEvent, err: GraphError, *, fbc_dropped: bool = False
    ) -> None:
        self.out.dead.append((event.id, err.subcode, fbc_dropped))


async def bisect(batch: list[LeasedEvent], meta: ScriptedMeta) -> Recorded:
    sink = Sink()
    await Bisection(meta.send, sink).run(batch, meta.first_answer(batch))
    return sink.out


@dataclass(frozen=True)
class Row:
    name: str
    size: int
    bad: dict[int, tuple[int, int]]
    delivered: list[int]
    dead: list[tuple[int, int | None, bool]]
    requests: list[tuple[int, ...]]
    fbc: frozenset[int] = frozenset()
    fbc_only: frozenset[int] = frozenset()
    script: dict[int, GraphError] = field(default_factory=dict)
    refused: list[tuple[tuple[int, ...], RetryClass]] = field(default_factory=list)
    fbc_dropped: list[int] = field(default_factory=list)


ROWS = [
    Row(
        "a lone event refused with its own error is dead-lettered without another request",
        size=1,
        bad={0: INVALID},
        delivered=[],
        dead=[(0, 2804050, False)],
        requests=[],
    ),
    Row(
        "the bad event in the left half: its own error is proof, the rest is delivered",
        size=4,
        bad={0: INVALID},
        delivered=[1, 2, 3],
        dead=[(0, 2804050, False)],
        requests=[(0, 1), (0,), (1,), (2, 3)],
    ),
    Row(
        "an accepted left half points at the right half, split again without being sent",
        size=8,
        bad={3: INVALID},
        delivered=[0, 1, 2, 4, 5, 6, 7],
        dead=[(3, 2804050, False)],
        requests=[(0, 1, 2, 3), (0, 1), (2,), (3,), (4, 5, 6, 7)],
    ),
    Row(
        "two bad events, one in each half",
        size=8,
        bad={1: INVALID, 6: INVALID},
        delivered=[0, 2, 3, 4, 5, 7],
        dead=[(1, 2804050, False), (6, 2804050, False)],
        requests=[(0, 1, 2, 3), (0, 1), (0,), (1,), (2, 3), (4, 5, 6, 7), (4, 5), (6,), (7,)],
    ),
    Row(
        "a refusal that named no event of the batch: each inferred lone event is sent "
        "once more, and nothing is dead-lettered on inference",
        size=2,
        bad={},
        delivered=[0, 1],
        dead=[],
        requests=[(0,), (1,)],
    ),
    Row(
        "a malformed fbc: the lone event is sent again without fbc and delivered",
        size=2,
        bad={1: BAD_FBC},
        fbc=frozenset({1}),
        fbc_only=frozenset({1}),
        delivered=[0, 1],
        fbc_dropped=[1],
        dead=[],
        requests=[(0,), (1,), (1,)],
    ),
    Row(
        "a malformed fbc on an event that is bad anyway: dead-lettered after the one resend",
        size=1,
        bad={0: BAD_FBC},
        fbc=frozenset({0}),
        delivered=[],
        dead=[(0, 2804001, True)],
        requests=[(0,)],
    ),
    Row(
        "a malformed fbc on an event without fbc: nothing to drop, dead-lettered",
        size=1,
        bad={0: BAD_FBC},
        delivered=[],
        dead=[(0, 2804001, False)],
        requests=[],
    ),
    Row(
        "an outage mid-bisection: the unsent right half shares the left half's fate",
        size=4,
        bad={2: INVALID},
        script={0: OUTAGE},
        delivered=[],
        dead=[],
        refused=[((0, 1, 2, 3), RetryClass.TRANSIENT)],
        requests=[(0, 1)],
    ),
    Row(
        "a throttle on the right half: only the right half is handed back",
        size=4,
        bad={0: INVALID},
        script={3: THROTTLE},
        delivered=[1],
        dead=[(0, 2804050, False)],
        refused=[((2, 3), RetryClass.THROTTLED)],
        requests=[(0, 1), (0,), (1,), (2, 3)],
    ),
    Row(
        "an inferred lone event whose resend meets an outage is handed back, not dead-lettered",
        size=2,
        bad={1: INVALID},
        script={1: OUTAGE},
        delivered=[0],
        dead=[],
        refused=[((1,), RetryClass.TRANSIENT)],
        requests=[(0,), (1,)],
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
async def test_bisection_table(row: Row) -> None:
    batch = [event(i, fbc=i in row.fbc) for i in range(row.size)]
    meta = ScriptedMeta(bad=row.bad, fbc_only=row.fbc_only, script=row.script)
    out = await bisect(batch, meta)
    assert sorted(out.delivered) == row.delivered
    assert out.dead == row.dead
    assert out.refused == row.refused
    assert out.fbc_dropped == row.fbc_dropped
    assert meta.requests == row.requests


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=64),
    data=st.data(),
)
def test_every_event_is_settled_once_and_only_bad_ones_are_dead_lettered(
    size: int, data: st.DataObject
) -> None:
    bad_ids = data.draw(st.sets(st.integers(0, size - 1), min_size=1, max_size=min(size, 4)))
    meta = ScriptedMeta(bad={i: INVALID for i in bad_ids})
    out = asyncio.run(bisect([event(i) for i in range(size)], meta))
    assert sorted(out.delivered + [d[0] for d in out.dead]) == list(range(size))
    assert {d[0] for d in out.dead} == bad_ids
    # Extra requests stay near log2(n) per bad event, never above 2·log2(n) + 1 each.
    assert len(meta.requests) <= len(bad_ids) * (2 * math.ceil(math.log2(size)) + 1) + 1


def test_without_fbc_drops_only_the_click_id() -> None:
    stripped = without_fbc(event(0, fbc=True).payload)
    assert stripped is not None
    assert orjson.loads(stripped)["user_data"] == {"em": ["a" * 64]}
    assert without_fbc(event(0).payload) is None
