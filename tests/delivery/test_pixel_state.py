"""The per-pixel state machines and the failure routing, as tables."""

from __future__ import annotations

import pytest

from capirelay.delivery import AIMDLimit, Breaker, BreakerState, is_event_level
from capirelay.delivery.lease import dead_letter_reason
from capirelay.graph import GraphError
from capirelay.outbox import DeadLetterReason


@pytest.mark.parametrize(
    ("status", "code", "subcode", "event_level", "reason"),
    [
        (400, 100, 2804009, True, DeadLetterReason.INVALID),  # missing value: bisect
        (400, 100, 2804003, True, DeadLetterReason.EXPIRED),  # too old by Meta's clock
        (400, 100, None, False, None),  # invalid parameter naming no event: hold, not bisect
        (400, 100, 2804050, True, DeadLetterReason.INVALID),  # generic invalid event
        (400, 9999, None, False, None),  # unknown code: hold the pixel
        (400, 11, None, False, None),  # method deprecated: hold the pixel
        (400, 100, 2804030, True, DeadLetterReason.CONFIG),  # LDU required: per event, config
        (400, 100, 33, False, None),  # unknown pixel: breaker, not bisect
        (400, 190, 463, False, None),  # expired token
        (403, 200, None, False, None),  # permission
        (400, 2635, None, False, None),  # deprecated version
        (500, 2, None, False, None),  # transient
        (400, 80004, None, False, None),  # throttled
        (None, None, None, False, None),  # timeout
    ],
)
def test_which_failures_are_bisected(
    status: int | None,
    code: int | None,
    subcode: int | None,
    event_level: bool,
    reason: DeadLetterReason | None,
) -> None:
    err = GraphError(status=status, code=code, subcode=subcode, message="x")
    assert is_event_level(err) is event_level
    if reason is not None:
        assert dead_letter_reason(err) is reason


@pytest.mark.parametrize(
    ("ceiling", "events", "expected"),
    [
        (4, "", 4),
        (4, "T", 2),
        (4, "TT", 1),
        (4, "TTT", 1),  # floor 1
        (4, "TTS", 2),  # limit 1: one success is a full window
        (4, "TTSSS", 3),  # then 2 successes per step
        (4, "TTSSSSSS", 4),  # 1 + 2 + 3 successes back to the ceiling
        (4, "TTSSSSSSSSSS", 4),  # never above the ceiling
        (8, "TSTS", 2),  # a throttle restarts the window (else 3)
        (1, "SSST", 1),
    ],
)
def test_aimd(ceiling: int, events: str, expected: int) -> None:
    limit = AIMDLimit(ceiling=ceiling)
    for event in events:
        limit.on_throttle() if event == "T" else limit.on_success()
    assert limit.limit == expected


def test_breaker_lifecycle() -> None:
    breaker = Breaker(probe_interval=30)
    assert not breaker.sending_blocked
    assert breaker.trip(100.0, wall_time=5000.0) is True  # news: log it
    assert (breaker.state, breaker.opened_at) == (BreakerState.OPEN, 5000.0)
    assert not breaker.probe_due(129.9)
    assert breaker.probe_due(130.0)
    breaker.start_probe()
    assert breaker.state is BreakerState.HALF_OPEN and breaker.sending_blocked
    assert breaker.trip(131.0, wall_time=5031.0) is False  # failed probe: not news
    assert breaker.opened_at == 5000.0 and breaker.next_probe_at == 161.0
    breaker.start_probe()
    assert breaker.close() is True
    assert (breaker.state, breaker.opened_at) == (BreakerState.CLOSED, None)
    assert breaker.close() is False
    assert breaker.mark_unconfigured() is True
    assert breaker.mark_unconfigured() is False
