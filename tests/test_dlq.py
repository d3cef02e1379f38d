"""DLQ operations on a real outbox (each backend): list, show, replay (re-validated, in
deadline, through dedup), purge."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from capirelay.ops.dlq import list_dead_letters, purge, replay, show
from capirelay.outbox import (
    Attempt,
    DeadLetterReason,
    DLQFilter,
    NewEvent,
    Outbox,
)
from capirelay.outbox.base import unverified_claim
from capirelay.validate import deadline

NOW = 1_800_000_000.0
DAY = 86400
PIXEL = "555"


def wire(
    event_id: str, *, age_days: float = 1, valid: bool = True, source: str = "website"
) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": int(NOW - age_days * DAY),
        "event_id": event_id,
        "action_source": source,
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "em": [hashlib.sha256(b"someone@example.com").hexdigest()],
            "client_user_agent": "Mozilla/5.0",
            "client_ip_address": "203.0.113.5",
        },
        "custom_data": {"currency": "EUR", "value": 5.0} if valid else {"value": 5.0},
    }


def new_event(payload: dict[str, Any]) -> NewEvent:
    return NewEvent(
        pixel_id=PIXEL,
        event_name=payload["event_name"],
        event_id=payload["event_id"],
        payload=orjson.dumps(payload),
        event_time=payload["event_time"],
        deadline=deadline(payload),
    )


async def dead_letter(outbox: Outbox, payload: dict[str, Any], reason: DeadLetterReason) -> int:
    await outbox.enqueue([new_event(payload)], now=NOW - DAY)
    [leased] = await outbox.lease(PIXEL, limit=1, lease_seconds=30, now=NOW - DAY)
    rejection = Attempt(
        at=NOW - DAY,
        status=400,
        code=100,
        subcode=2804009,
        message="Invalid parameter",
        fbtrace_id="Trace1",
        retry_class="invalid",
    )
    await outbox.dead_letter(
        [leased.id], reason=reason, attempt=rejection, now=NOW - DAY, lease_id=leased.lease_id
    )
    [letter] = await outbox.dlq_list(limit=1)
    return letter.id


async def test_list_and_show(outbox: Outbox) -> None:
    dlq_id = await dead_letter(outbox, wire("a", valid=False), DeadLetterReason.INVALID)
    [row] = await list_dead_letters(outbox)
    assert (
        row.id,
        row.event_id,
        row.reason,
        row.code,
        row.subcode,
        row.fbtrace_id,
        row.attempts,
    ) == (
        dlq_id,
        "a",
        "invalid",
        100,
        2804009,
        "Trace1",
        1,
    )
    assert await list_dead_letters(outbox, DLQFilter(reason="expired")) == []
    detail = await show(outbox, dlq_id)
    assert detail is not None
    assert detail.event["user_data"]["em"] == [hashlib.sha256(b"someone@example.com").hexdigest()]
    assert detail.to_dict()["fbtrace_id"] == "Trace1"
    assert detail.attempts[0]["code"] == 100
    assert await show(outbox, 424242) is None


async def test_replay_requeues_only_valid_events_inside_their_deadline(
    outbox: Outbox,
) -> None:
    fixed = await dead_letter(outbox, wire("fixed"), DeadLetterReason.INVALID)
    broken = await dead_letter(outbox, wire("broken", valid=False), DeadLetterReason.INVALID)
    old = await dead_letter(outbox, wire("old", age_days=8), DeadLetterReason.EXPIRED)
    store = await dead_letter(
        outbox, wire("store", age_days=30, source="physical_store"), DeadLetterReason.CONFIG
    )

    preview = await replay(outbox, [fixed, broken, old, store, 999], now=NOW, dry_run=True)
    assert len(await outbox.dlq_list()) == 4  # a dry run changes nothing
    report = await replay(outbox, [fixed, broken, old, store, 999], now=NOW)
    for result in (preview, report):
        assert sorted(result.requeued) == sorted([fixed, store])
        assert list(result.still_invalid) == [broken]
        assert result.expired == [old]
        assert result.not_found == [999]
    assert report.counts == {
        "requeued": 2,
        "still_invalid": 1,
        "expired": 1,
        "not_found": 1,
        "duplicate": 0,
    }
    assert {p.field for p in report.still_invalid[broken]} == {"custom_data.currency"}
    assert report.to_dict()["counts"]["requeued"] == 2

    leased = await outbox.lease(PIXEL, limit=10, lease_seconds=30, now=NOW)
    assert sorted(e.event_id for e in leased) == ["fixed", "store"]
    assert sorted(d.event_id for d in await outbox.dlq_list()) == ["broken", "old"]


async def test_replay_by_filter(outbox: Outbox) -> None:
    for i in range(3):
        await dead_letter(outbox, wire(f"inv{i}"), DeadLetterReason.INVALID)
    await dead_letter(outbox, wire("cfg"), DeadLetterReason.CONFIG)
    report = await replay(outbox, DLQFilter(reason="invalid"), now=NOW)
    assert report.counts["requeued"] == 3
    assert [d.event_id for d in await outbox.dlq_list()] == ["cfg"]


async def test_purge(outbox: Outbox) -> None:
    first = await dead_letter(outbox, wire("p1"), DeadLetterReason.INVALID)
    await dead_letter(outbox, wire("p2"), DeadLetterReason.EXPIRED)
    await dead_letter(outbox, wire("p3"), DeadLetterReason.EXPIRED)
    assert await purge(outbox, [first]) == 1
    assert await purge(outbox, DLQFilter(reason="expired")) == 2
    assert await outbox.dlq_list() == []


async def test_replay_leaves_a_letter_whose_corrected_resend_is_queued(outbox: Outbox) -> None:
    letter = await dead_letter(outbox, wire("order-7"), DeadLetterReason.INVALID)
    # The client fixed the event and resent it with the same event_id: queued again.
    await outbox.enqueue([new_event(wire("order-7"))], now=NOW - 60)
    report = await replay(outbox, [letter], now=NOW)
    assert (report.requeued, report.duplicate) == ([], [letter])
    assert report.counts["duplicate"] == 1
    assert [d.id for d in await outbox.dlq_list()] == [letter]
    assert (await outbox.stats(now=NOW)).depth == 1  # only the resend


async def test_replay_of_two_letters_with_one_key_queues_one(outbox: Outbox) -> None:
    first = await dead_letter(outbox, wire("order-8"), DeadLetterReason.INVALID)
    second = await dead_letter(outbox, wire("order-8"), DeadLetterReason.EXPIRED)
    preview = await replay(outbox, [first, second], now=NOW, dry_run=True)
    report = await replay(outbox, [first, second], now=NOW)
    for result in (preview, report):
        assert (result.requeued, result.duplicate) == ([first], [second])
    [queued] = await outbox.lease(PIXEL, limit=10, lease_seconds=30, now=NOW)
    assert queued.event_id == "order-8"
    assert [d.id for d in await outbox.dlq_list()] == [second]


async def test_replay_keeps_an_unverified_beacons_letter_apart_from_the_authenticated_one(
    outbox: Outbox,
) -> None:
    # A forged beacon (0.01) and the shop's own event under one id claim their keys apart
    # (capirelay.orders): both dead-lettered, a replay that meets the forged one first
    # must not hold back the real one as its duplicate.
    forged_payload = wire("order-9") | {"custom_data": {"currency": "USD", "value": 0.01}}
    forged = unverified_claim(new_event(forged_payload))
    assert [str(s) for s in await outbox.enqueue([forged], now=NOW - DAY)] == ["queued"]
    real = new_event(wire("order-9"))
    assert [str(s) for s in await outbox.enqueue([real], now=NOW - DAY)] == ["queued"]
    leased = await outbox.lease(PIXEL, limit=10, lease_seconds=30, now=NOW - DAY)
    await outbox.dead_letter(
        [e.id for e in leased],
        reason=DeadLetterReason.INVALID,
        attempt=None,
        now=NOW - DAY,
        lease_id=leased[0].lease_id,
    )
    letters = await outbox.dlq_list(limit=10)
    assert sorted((x.event_id, x.unverified) for x in letters) == [
        ("order-9", False),
        ("order-9", True),
    ]
    ordered = sorted(letters, key=lambda x: not x.unverified)  # the forged one first
    report = await replay(outbox, [x.id for x in ordered], now=NOW)
    assert sorted(report.requeued) == sorted(x.id for x in letters) and not report.duplicate
    queued = await outbox.lease(PIXEL, limit=10, lease_seconds=30, now=NOW)
    values = sorted(orjson.loads(e.payload)["custom_data"]["value"] for e in queued)
    assert values == [0.01, 5.0]
