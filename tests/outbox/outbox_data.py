"""Shared test data for the outbox tests: a fixed clock and an event factory."""

from __future__ import annotations

import orjson

from capirelay.outbox import NewEvent

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
