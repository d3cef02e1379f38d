"""Meta's ``error_user_title`` / ``error_user_msg`` reach every place a refusal is told.

Meta answers ``"message": "Invalid parameter"`` for every code 100 subcode; only the user
message names the refused event's index and field.  An event dead-lettered by the
emulator keeps it in the dead letter, its summary (``dlq show``, the dashboard), the
event's story (``trace``) and the gateway's log line.
"""

from __future__ import annotations

import logging

import pytest
from delivery_data import (
    PIXEL,
    EngineFactory,
    add_faults,
    new_event,
    queue_events,
    wire_event,
)

from capirelay.delivery import BreakerState
from capirelay.emulator.testing import RunningEmulator
from capirelay.graph import GraphError
from capirelay.ops.dlq import summarize
from capirelay.ops.trace import pauses_of, story
from capirelay.outbox import Outbox
from waiting import wait_for_async

USER_MSG = "Event 0: rejected by an injected emulator fault."


async def test_a_dead_letter_keeps_metas_user_message(
    start_engine: EngineFactory,
    outbox: Outbox,
    emulator: RunningEmulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await add_faults(emulator, {"kind": "invalid_event", "event_id": "um-1", "subcode": 2804050})
    await queue_events(outbox, [new_event(wire_event("um-1"))])
    engine = await start_engine()
    with caplog.at_level(logging.WARNING, logger="capirelay.delivery"):
        engine.notify(PIXEL)
        assert await engine.drain(timeout=20)

    [letter] = await outbox.dlq_list(limit=10)
    assert letter.error is not None
    assert letter.error["message"] == "Invalid parameter"
    assert letter.error["user_msg"] == USER_MSG
    assert letter.attempts[-1]["user_msg"] == USER_MSG
    summary = summarize(letter)
    assert summary.message is not None
    assert summary.message.startswith("Invalid parameter — ") and USER_MSG in summary.message

    record = await outbox.trace("um-1", pixel_id=PIXEL)
    told = " | ".join(step.detail for step in story(record))
    assert USER_MSG in told, told

    dead_lettered = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert dead_lettered and USER_MSG in dead_lettered[-1]


def test_metas_messages_are_stored_without_an_email_or_a_phone() -> None:
    body = (
        b'{"error": {"message": "Invalid parameter", "type": "OAuthException", "code": 100,'
        b' "error_subcode": 2804050, "error_user_title": "Invalid email",'
        b' "error_user_msg": "Event 2: jane.doe@example.com or +1 650 555 1212 is not valid.",'
        b' "fbtrace_id": "AbC"}}'
    )
    err = GraphError.from_response(400, {}, body)
    assert err.user_msg == "Event 2: [email] or [phone] is not valid."
    assert err.meta_says == (
        "Invalid parameter — Invalid email — Event 2: [email] or [phone] is not valid."
    )
    assert "example.com" not in str(err) and "555" not in str(err)
    assert "Event 2" in str(err)  # the event's index survives: it is the point


async def test_a_queued_event_of_a_paused_pixel_says_why(
    start_engine: EngineFactory, outbox: Outbox, emulator: RunningEmulator
) -> None:
    # The breaker releases the events without an attempt of their own: the story must
    # still say that delivery is paused, why, and the fix, not "being sent".
    await add_faults(emulator, {"kind": "token_revoked"})
    await queue_events(outbox, [new_event(wire_event("held-1"))])
    engine = await start_engine(breaker_probe_seconds=3600)
    engine.notify(PIXEL)
    await wait_for_async(lambda: engine.pixel_status(PIXEL).breaker is BreakerState.OPEN)

    record = await outbox.trace("held-1", pixel_id=PIXEL)
    [pending] = story(record, pauses_of(engine.status()))[-1:]
    assert pending.what == "paused"
    assert "code 190/463" in pending.detail and "fbtrace_id" in pending.detail
    assert "new system-user token" in pending.detail  # the fix for 190
    # Told from storage alone (the CLI), the step does not claim the event is being sent.
    [plain] = story(record)[-1:]
    assert plain.what == "queued" and "paused" in plain.detail
