"""The Outbox contract: queue, dedup, leases, attempt log, dead letters, stats.

Every test here runs on each implementation (``InMemoryOutbox``, SQLite, PostgreSQL)
through the ``outbox`` fixture of ``tests/outbox/conftest.py``; what one backend does
on its own (files, migrations, group commit) is tested beside it.
"""

from __future__ import annotations

import pytest
from outbox_data import T0, make_event

from capirelay.outbox import (
    DEDUP_WINDOW_SECONDS,
    Attempt,
    DeadLetterReason,
    DLQFilter,
    EnqueueStatus,
    Outbox,
    RequeueResult,
)
from capirelay.outbox.base import ATTEMPT_LOG_LIMIT

pytestmark = pytest.mark.outbox_contract

QUEUED, DUPLICATE = EnqueueStatus.QUEUED, EnqueueStatus.DUPLICATE


def failure(at: float = T0, **kw: object) -> Attempt:
    fields: dict[str, object] = {"status": 500, "code": 2, "message": "Service unavailable"}
    fields.update(kw)
    return Attempt(at=at, **fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------ enqueue / dedup


async def test_same_key_twice_in_one_call_queues_the_first_only(outbox: Outbox) -> None:
    statuses = await outbox.enqueue([make_event("a"), make_event("a"), make_event("b")], now=T0)
    assert statuses == [QUEUED, DUPLICATE, QUEUED]
    assert (await outbox.stats(now=T0)).depth == 2


@pytest.mark.parametrize(
    ("pixel_id", "event_name", "offset", "expected"),
    [
        ("111", "Purchase", 60, DUPLICATE),  # same key a minute later
        ("111", "Purchase", DEDUP_WINDOW_SECONDS - 1, DUPLICATE),  # still inside 48 h
        ("111", "Purchase", DEDUP_WINDOW_SECONDS, DUPLICATE),  # window over, still queued
        ("111", "Lead", 60, QUEUED),  # other event_name
        ("222", "Purchase", 60, QUEUED),  # other pixel
    ],
)
async def test_dedup_across_calls(
    outbox: Outbox, pixel_id: str, event_name: str, offset: float, expected: EnqueueStatus
) -> None:
    assert await outbox.enqueue([make_event("a")], now=T0) == [QUEUED]
    again = make_event("a", pixel_id=pixel_id, event_name=event_name)
    assert await outbox.enqueue([again], now=T0 + offset) == [expected]


async def test_expire_dedup_forgets_only_keys_older_than_the_window(outbox: Outbox) -> None:
    await outbox.enqueue([make_event("old")], now=T0)
    await outbox.enqueue([make_event("new")], now=T0 + 3600)
    delivered = await outbox.lease("111", limit=10, lease_seconds=30, now=T0 + 3600)
    await outbox.ack([e.id for e in delivered], now=T0 + 3600, lease_id=delivered[0].lease_id)
    assert await outbox.expire_dedup(now=T0 + DEDUP_WINDOW_SECONDS + 1) == 1
    later = T0 + DEDUP_WINDOW_SECONDS + 2
    assert await outbox.enqueue([make_event("old"), make_event("new")], now=later) == [
        QUEUED,
        DUPLICATE,
    ]


@pytest.mark.parametrize("chunk", [1, 3, 100])
async def test_expiry_takes_every_expired_key_past_the_pinned_ones_chunk_after_chunk(
    outbox: Outbox, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys still queued after the window stay, wherever they sit among expired ones
    (here inside one enqueue's keys, which share a seen_at), and every chunk goes on
    from where the one before stopped, ties included."""
    for backend in ("postgres", "sqlite"):
        monkeypatch.setattr(f"capirelay.outbox.{backend}.outbox.DEDUP_EXPIRY_CHUNK", chunk)
    names = [f"k{i:02d}" for i in range(12)]
    pinned = {"k00", "k03", "k04", "k09"}
    assert await outbox.enqueue([make_event(n) for n in names], now=T0) == [QUEUED] * 12
    leased = await outbox.lease("111", limit=20, lease_seconds=30, now=T0)
    sent = [e.id for e in leased if e.event_id not in pinned]
    await outbox.ack(sent, now=T0, lease_id=leased[0].lease_id)
    await outbox.enqueue([make_event("young")], now=T0 + DEDUP_WINDOW_SECONDS)
    assert await outbox.expire_dedup(now=T0 + DEDUP_WINDOW_SECONDS + 1) == 8
    later = T0 + DEDUP_WINDOW_SECONDS + 2
    statuses = await outbox.enqueue([make_event(n) for n in [*names, "young"]], now=later)
    assert statuses == [DUPLICATE if n in pinned else QUEUED for n in names] + [DUPLICATE]


async def test_payload_round_trips_as_bytes(outbox: Outbox) -> None:
    event = make_event("a", test_event_code="TEST1")
    await outbox.enqueue([event], now=T0)
    [leased] = await outbox.lease("111", limit=10, lease_seconds=30, now=T0)
    assert leased.payload == event.payload
    assert isinstance(leased.payload, bytes)
    assert (leased.event_id, leased.test_event_code, leased.attempts) == ("a", "TEST1", 0)
    assert leased.queued_at == T0


# ------------------------------------------------------------------------ leases


async def test_lease_is_earliest_deadline_first_and_per_pixel(outbox: Outbox) -> None:
    await outbox.enqueue(
        [
            make_event("late", deadline=T0 + 300),
            make_event("soon", deadline=T0 + 100),
            make_event("other-pixel", pixel_id="222", deadline=T0 + 1),
            make_event("middle", deadline=T0 + 200),
        ],
        now=T0,
    )
    first = await outbox.lease("111", limit=2, lease_seconds=30, now=T0)
    assert [e.event_id for e in first] == ["soon", "middle"]
    rest = await outbox.lease("111", limit=10, lease_seconds=30, now=T0)
    assert [e.event_id for e in rest] == ["late"]
    assert await outbox.lease("111", limit=10, lease_seconds=30, now=T0) == []


async def test_expired_lease_returns_the_events(outbox: Outbox) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    [first] = await outbox.lease("111", limit=10, lease_seconds=30, now=T0)
    assert await outbox.lease("111", limit=10, lease_seconds=30, now=T0 + 29) == []
    [again] = await outbox.lease("111", limit=10, lease_seconds=30, now=T0 + 30)
    assert again.id == first.id


async def test_ack_removes_events(outbox: Outbox) -> None:
    await outbox.enqueue([make_event("a"), make_event("b")], now=T0)
    leased = await outbox.lease("111", limit=10, lease_seconds=30, now=T0)
    await outbox.ack([e.id for e in leased], now=T0, lease_id=leased[0].lease_id)
    stats = await outbox.stats(now=T0)
    assert (stats.depth, stats.leased) == (0, 0)
    assert await outbox.lease("111", limit=10, lease_seconds=30, now=T0 + 3600) == []


async def test_reschedule_counts_the_attempt_and_delays(outbox: Outbox) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    [leased] = await outbox.lease("111", limit=10, lease_seconds=30, now=T0)
    await outbox.reschedule(
        [leased.id], next_attempt_at=T0 + 8, attempt=failure(), lease_id=leased.lease_id
    )
    assert await outbox.next_due_at("111") == T0 + 8
    assert await outbox.due_pixels(now=T0 + 7) == []
    assert await outbox.lease("111", limit=10, lease_seconds=30, now=T0 + 7) == []
    assert await outbox.due_pixels(now=T0 + 8) == ["111"]
    [again] = await outbox.lease("111", limit=10, lease_seconds=30, now=T0 + 8)
    assert again.attempts == 1


async def test_release_gives_events_back_without_an_attempt(outbox: Outbox) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    [leased] = await outbox.lease("111", limit=10, lease_seconds=300, now=T0)
    await outbox.release([leased.id], lease_id=leased.lease_id)
    [again] = await outbox.lease("111", limit=10, lease_seconds=300, now=T0)
    assert (again.id, again.attempts) == (leased.id, 0)


async def test_attempt_log_is_bounded(outbox: Outbox) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    for n in range(ATTEMPT_LOG_LIMIT + 5):
        [leased] = await outbox.lease("111", limit=1, lease_seconds=30, now=T0 + n)
        await outbox.reschedule(
            [leased.id],
            next_attempt_at=T0 + n + 1,
            attempt=failure(T0 + n),
            lease_id=leased.lease_id,
        )
    [leased] = await outbox.lease("111", limit=1, lease_seconds=30, now=T0 + 100)
    assert leased.attempts == ATTEMPT_LOG_LIMIT + 5
    await outbox.dead_letter(
        [leased.id],
        reason=DeadLetterReason.EXPIRED,
        attempt=None,
        now=T0 + 100,
        lease_id=leased.lease_id,
    )
    [dead] = await outbox.dlq_list()
    assert len(dead.attempts) == ATTEMPT_LOG_LIMIT
    assert dead.attempts[-1]["at"] == T0 + ATTEMPT_LOG_LIMIT + 4  # the newest are kept


# ------------------------------------------------------------------ dead letters


async def test_dead_letter_keeps_metas_error_and_forgets_the_dedup_key(
    outbox: Outbox,
) -> None:
    await outbox.enqueue([make_event("bad")], now=T0)
    [leased] = await outbox.lease("111", limit=10, lease_seconds=30, now=T0)
    rejection = failure(status=400, code=100, subcode=2804009, fbtrace_id="AbC123")
    await outbox.dead_letter(
        [leased.id],
        reason=DeadLetterReason.INVALID,
        attempt=rejection,
        now=T0 + 1,
        lease_id=leased.lease_id,
    )
    [dead] = await outbox.dlq_list()
    assert (dead.reason, dead.dead_at, dead.event_id) == ("invalid", T0 + 1, "bad")
    assert dead.error == rejection.to_dict()
    assert dead.attempts == [rejection.to_dict()]
    assert await outbox.dlq_get(dead.id) == dead
    assert (await outbox.stats(now=T0)).depth == 0
    # Meta never accepted it, so a corrected resend with the same id gets through.
    assert await outbox.enqueue([make_event("bad")], now=T0 + 2) == [QUEUED]


async def _dead_letters(outbox: Outbox) -> None:
    rows = [
        ("a", "111", "Purchase", DeadLetterReason.INVALID, T0 + 10),
        ("b", "111", "Lead", DeadLetterReason.EXPIRED, T0 + 20),
        ("c", "222", "Purchase", DeadLetterReason.INVALID, T0 + 30),
        ("d", "222", "Purchase", DeadLetterReason.CONFIG, T0 + 40),
    ]
    for event_id, pixel_id, name, reason, dead_at in rows:
        await outbox.enqueue([make_event(event_id, pixel_id=pixel_id, event_name=name)], now=T0)
        [leased] = await outbox.lease(pixel_id, limit=1, lease_seconds=30, now=T0)
        await outbox.dead_letter(
            [leased.id], reason=reason, attempt=None, now=dead_at, lease_id=leased.lease_id
        )


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (None, ["d", "c", "b", "a"]),
        (DLQFilter(pixel_id="111"), ["b", "a"]),
        (DLQFilter(reason="invalid"), ["c", "a"]),
        (DLQFilter(event_name="Purchase", pixel_id="222"), ["d", "c"]),
        (DLQFilter(since=T0 + 20), ["d", "c", "b"]),
        (DLQFilter(until=T0 + 20), ["a"]),
        (DLQFilter(since=T0 + 20, until=T0 + 40), ["c", "b"]),
    ],
)
async def test_dlq_filters(outbox: Outbox, flt: DLQFilter | None, expected: list[str]) -> None:
    await _dead_letters(outbox)
    assert [d.event_id for d in await outbox.dlq_list(flt)] == expected


async def test_dlq_paging(outbox: Outbox) -> None:
    await _dead_letters(outbox)
    assert [d.event_id for d in await outbox.dlq_list(limit=2, offset=1)] == ["c", "b"]
    assert await outbox.dlq_get(9999) is None


async def test_dlq_requeue_resets_attempts_and_remembers_the_key(outbox: Outbox) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    [leased] = await outbox.lease("111", limit=1, lease_seconds=30, now=T0)
    await outbox.reschedule(
        [leased.id], next_attempt_at=T0, attempt=failure(), lease_id=leased.lease_id
    )
    [leased] = await outbox.lease("111", limit=1, lease_seconds=30, now=T0)
    await outbox.dead_letter(
        [leased.id], reason=DeadLetterReason.INVALID, attempt=None, now=T0, lease_id=leased.lease_id
    )
    [dead] = await outbox.dlq_list()
    assert await outbox.dlq_requeue([dead.id, 12345], now=T0 + 50) == RequeueResult([dead.id])
    assert await outbox.dlq_list() == []
    [back] = await outbox.lease("111", limit=1, lease_seconds=30, now=T0 + 50)
    assert (back.event_id, back.attempts, back.queued_at) == ("a", 0, T0 + 50)
    assert await outbox.enqueue([make_event("a")], now=T0 + 60) == [DUPLICATE]


async def test_dlq_purge_by_ids_and_by_filter(outbox: Outbox) -> None:
    await _dead_letters(outbox)
    ids = {d.event_id: d.id for d in await outbox.dlq_list()}
    assert await outbox.dlq_purge([ids["a"]]) == 1
    assert await outbox.dlq_purge(flt=DLQFilter(pixel_id="222")) == 2
    assert [d.event_id for d in await outbox.dlq_list()] == ["b"]
    assert await outbox.dlq_purge(flt=DLQFilter()) == 1
    with pytest.raises(ValueError, match="ids or a filter"):
        await outbox.dlq_purge()


# ------------------------------------------------------------------------- stats


async def test_stats_and_due_pixels(outbox: Outbox) -> None:
    await outbox.enqueue(
        [
            make_event("a", deadline=T0 + 500),
            make_event("b", deadline=T0 + 100),
            make_event("c", pixel_id="222", deadline=T0 + 900),
        ],
        now=T0,
    )
    await outbox.enqueue([make_event("d", pixel_id="333")], now=T0 + 5)
    [leased] = await outbox.lease("333", limit=1, lease_seconds=30, now=T0 + 5)
    await outbox.dead_letter(
        [leased.id], reason=DeadLetterReason.EXPIRED, attempt=None, now=T0, lease_id=leased.lease_id
    )
    await outbox.lease("111", limit=1, lease_seconds=30, now=T0)
    stats = await outbox.stats(now=T0)
    assert stats.depth == 3
    assert stats.leased == 1
    assert stats.depth_by_pixel == {"111": 2, "222": 1}
    assert stats.oldest_queued_at == T0
    assert stats.earliest_deadline == T0 + 100  # the leased one still counts
    assert (stats.dlq_size, stats.dlq_by_reason) == (1, {"expired": 1})
    assert await outbox.due_pixels(now=T0) == ["111", "222"]
    assert await outbox.next_due_at() == T0
