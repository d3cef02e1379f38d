"""The outbox's read-only dashboard views: queue and dead letters grouped, recent queued events.

The SQLite and in-memory implementations are checked against :class:`ScanViews`
(written with the core contract only), so a backend that implements
:class:`OutboxViews` must agree with the same answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from capirelay.outbox import Attempt, DeadLetterReason, NewEvent, Outbox, SQLiteOutbox
from capirelay.outbox.base import DLQGroup, QueueGroup
from capirelay.outbox.memory import InMemoryOutbox
from capirelay.outbox.views import ScanViews, views_of

NOW = 1_790_000_000.0
WEEK = 7 * 86400


def _event(pixel: str, name: str, event_id: str, event_time: int) -> NewEvent:
    payload = {"event_name": name, "event_id": event_id, "event_time": event_time}
    return NewEvent(pixel, name, event_id, orjson.dumps(payload), event_time, event_time + WEEK)


def _refusal(code: int | None, subcode: int | None, trace: str) -> Attempt:
    return Attempt(at=NOW, status=400, code=code, subcode=subcode, message=f"m-{trace}",
                   fbtrace_id=trace, retry_class="invalid")  # fmt: skip


Box = SQLiteOutbox | InMemoryOutbox  # both implement the core contract and OutboxViews


@pytest.fixture(params=["sqlite", "memory"])
async def outbox(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Box]:
    box: Box
    if request.param == "memory":
        box = InMemoryOutbox()
    else:
        box = SQLiteOutbox(str(tmp_path / "views.db"))
    await box.open()
    try:
        yield box
    finally:
        await box.close()


async def _fill(box: Outbox) -> None:
    t = int(NOW) - 3600
    events = [
        _event("111", "Purchase", "p1", t),
        _event("111", "Purchase", "p2", t + 10),
        _event("111", "Lead", "l1", t + 20),
        _event("222", "Purchase", "q1", t + 30),
        _event("111", "Purchase", "bad1", t + 40),
        _event("111", "Purchase", "bad2", t + 50),
        _event("111", "Purchase", "bad3", t + 60),
        _event("222", "Lead", "old", t + 70),
    ]
    await box.enqueue(events, now=NOW)
    leased = {e.event_id: e for e in await box.lease("111", limit=100, lease_seconds=60, now=NOW)}
    leased |= {e.event_id: e for e in await box.lease("222", limit=100, lease_seconds=60, now=NOW)}

    async def dead(event_id: str, reason: DeadLetterReason, attempt: Attempt | None,
                   at: float) -> None:  # fmt: skip
        held = leased[event_id]
        await box.dead_letter([held.id], reason=reason, attempt=attempt, now=at,
                              lease_id=held.lease_id)  # fmt: skip

    await dead("bad1", DeadLetterReason.INVALID, _refusal(100, 2804050, "T1"), NOW + 1)
    await dead("bad2", DeadLetterReason.INVALID, _refusal(100, 2804050, "T2"), NOW + 2)
    await dead("bad3", DeadLetterReason.CONFIG, _refusal(100, 2804030, "T3"), NOW + 3)
    await dead("old", DeadLetterReason.EXPIRED, None, NOW + 4)
    for event_id in ("p1", "p2", "l1", "q1"):
        await box.release([leased[event_id].id], lease_id=leased[event_id].lease_id)


async def test_queue_breakdown_groups_by_pixel_and_event_name(outbox: Box) -> None:
    await _fill(outbox)
    t = int(NOW) - 3600
    assert await outbox.queue_breakdown(now=NOW) == [
        QueueGroup("111", "Lead", 1, NOW, t + 20 + WEEK),
        QueueGroup("111", "Purchase", 2, NOW, t + WEEK),
        QueueGroup("222", "Purchase", 1, NOW, t + 30 + WEEK),
    ]


async def test_default_queue_breakdown_is_per_pixel(outbox: Box) -> None:
    await _fill(outbox)
    assert await ScanViews(outbox).queue_breakdown(now=NOW) == [
        QueueGroup("111", "*", 3, None, None),
        QueueGroup("222", "*", 1, None, None),
    ]


async def test_dlq_breakdown_groups_by_code_and_keeps_the_latest_trace(
    outbox: Box,
) -> None:
    await _fill(outbox)
    groups = await outbox.dlq_breakdown()
    assert groups[0] == DLQGroup(
        "111", "Purchase", "invalid", 100, 2804050, 2, NOW + 2, "m-T2", "T2"
    )
    assert set(groups[1:]) == {
        DLQGroup("111", "Purchase", "config", 100, 2804030, 1, NOW + 3, "m-T3", "T3"),
        DLQGroup("222", "Lead", "expired", None, None, 1, NOW + 4, None, None),
    }


async def test_dlq_breakdown_agrees_with_the_scan(outbox: Box) -> None:
    await _fill(outbox)
    assert set(await outbox.dlq_breakdown()) == set(await ScanViews(outbox).dlq_breakdown())
    assert views_of(outbox) is outbox


async def test_queue_sample_returns_newest_queued_without_leasing(outbox: Box) -> None:
    await _fill(outbox)
    sample = await outbox.queue_sample(limit=3)
    assert [e.event_id for e in sample] == ["q1", "l1", "p2"]
    assert orjson.loads(sample[0].payload)["event_id"] == "q1"
    # Still leasable: sampling is read-only.
    leased = await outbox.lease("222", limit=10, lease_seconds=60, now=NOW)
    assert [e.event_id for e in leased] == ["q1"]


async def test_views_of_an_empty_outbox(outbox: Box) -> None:
    assert await outbox.queue_breakdown(now=NOW) == []
    assert await outbox.dlq_breakdown() == []
    assert await outbox.queue_sample(limit=10) == []
    assert await ScanViews(outbox).queue_sample(limit=10) == []
