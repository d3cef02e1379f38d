"""Lease ids, lease extension, dedup keys pinned while queued, DLQ re-queue through dedup.

Regression tests for review findings 2 (a lease that ran out must not let its old
holder settle rows someone else now holds), 3 (a replayed dead letter claims its
dedup key like enqueue) and 4 (a key is never forgotten while its event is queued);
part of the contract suite (every backend and the in-memory outbox).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from outbox_data import T0, make_event

from capirelay.outbox import (
    DEDUP_WINDOW_SECONDS,
    Attempt,
    DeadLetterReason,
    EnqueueStatus,
    LeasedEvent,
    Outbox,
    RequeueResult,
)

pytestmark = pytest.mark.outbox_contract

QUEUED, DUPLICATE = EnqueueStatus.QUEUED, EnqueueStatus.DUPLICATE
LEASE = 30.0
FAILURE = Attempt(at=T0, status=500, code=2, message="Service unavailable")

Settle = Callable[[Outbox, list[int], str], Awaitable[None]]


async def _ack(box: Outbox, ids: list[int], lease_id: str) -> None:
    await box.ack(ids, now=T0 + LEASE, lease_id=lease_id)


async def _reschedule(box: Outbox, ids: list[int], lease_id: str) -> None:
    await box.reschedule(ids, next_attempt_at=T0 + 999, attempt=FAILURE, lease_id=lease_id)


async def _release(box: Outbox, ids: list[int], lease_id: str) -> None:
    await box.release(ids, lease_id=lease_id)


async def _dead_letter(box: Outbox, ids: list[int], lease_id: str) -> None:
    await box.dead_letter(
        ids, reason=DeadLetterReason.INVALID, attempt=None, now=T0 + LEASE, lease_id=lease_id
    )


async def _ack_delivered(box: Outbox, ids: list[int], lease_id: str) -> None:
    await box.ack_delivered(ids, now=T0 + LEASE, lease_id=lease_id)


SETTLES: list[Settle] = [_ack, _ack_delivered, _reschedule, _release, _dead_letter]


async def _lease_all(box: Outbox, now: float = T0) -> list[LeasedEvent]:
    return await box.lease("111", limit=100, lease_seconds=LEASE, now=now)


async def _dead_letter_one(box: Outbox, event_id: str, now: float = T0) -> int:
    await box.enqueue([make_event(event_id)], now=now)
    [leased] = await _lease_all(box, now)
    await box.dead_letter(
        [leased.id],
        reason=DeadLetterReason.INVALID,
        attempt=None,
        now=now,
        lease_id=leased.lease_id,
    )
    letters = await box.dlq_list()
    return max(letter.id for letter in letters)


# ------------------------------------------------------------------ lease ids


async def test_each_lease_call_names_its_events(outbox: Outbox) -> None:
    await outbox.enqueue([make_event("a"), make_event("b"), make_event("c")], now=T0)
    first = await outbox.lease("111", limit=2, lease_seconds=LEASE, now=T0)
    second = await outbox.lease("111", limit=2, lease_seconds=LEASE, now=T0)
    assert len({e.lease_id for e in first}) == 1 and first[0].lease_id
    assert second[0].lease_id and second[0].lease_id != first[0].lease_id
    assert all(e.lease_id == "" for e in await outbox.queue_sample(limit=10))


@pytest.mark.parametrize("settle", SETTLES, ids=lambda f: f.__name__.strip("_"))
async def test_a_lease_taken_over_cannot_be_settled_by_its_old_holder(
    outbox: Outbox, settle: Settle
) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    [stale] = await _lease_all(outbox)
    [current] = await _lease_all(outbox, T0 + LEASE)  # the first lease ran out
    assert current.id == stale.id and current.lease_id != stale.lease_id

    await settle(outbox, [stale.id], stale.lease_id)

    assert (await outbox.stats(now=T0 + LEASE)).leased == 1
    assert await outbox.dlq_list() == []
    await outbox.ack([current.id], now=T0 + LEASE, lease_id=current.lease_id)
    assert (await outbox.stats(now=T0 + LEASE)).depth == 0


@pytest.mark.parametrize("settle", SETTLES, ids=lambda f: f.__name__.strip("_"))
async def test_the_holder_settles_its_own_lease_even_after_it_ran_out(
    outbox: Outbox, settle: Settle
) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    [held] = await _lease_all(outbox)
    await settle(outbox, [held.id], held.lease_id)  # at T0 + LEASE: nobody took it since
    assert (await outbox.stats(now=T0 + LEASE)).leased == 0


@pytest.mark.parametrize("settle", SETTLES, ids=lambda f: f.__name__.strip("_"))
async def test_a_lease_id_nobody_was_given_settles_nothing(outbox: Outbox, settle: Settle) -> None:
    """The lease id is required: the empty one of an event only looked at (a dashboard
    sample) or an unknown one touches no row."""
    await outbox.enqueue([make_event("a")], now=T0)
    [held] = await _lease_all(outbox)
    for lease_id in ("", "0", "not-a-lease"):
        await settle(outbox, [held.id], lease_id)
    assert (await outbox.stats(now=T0)).leased == 1
    assert (await outbox.stats(now=T0)).dlq_size == 0


async def test_extend_lease_keeps_a_batch_in_flight_from_being_leased_again(
    outbox: Outbox,
) -> None:
    await outbox.enqueue([make_event("a"), make_event("b")], now=T0)
    leased = await _lease_all(outbox)
    ids = [e.id for e in leased]
    lease_id = leased[0].lease_id
    until = T0 + 3 * LEASE

    assert await outbox.extend_lease(ids, until=until, now=T0 + 20, lease_id=lease_id) == ids
    assert await _lease_all(outbox, T0 + LEASE) == []  # the original end has passed
    assert await outbox.next_due_at("111") == until
    # A heartbeat never shortens a lease.
    assert await outbox.extend_lease(ids, until=T0 + 25, now=T0 + 21, lease_id=lease_id) == ids
    assert await outbox.next_due_at("111") == until
    again = await _lease_all(outbox, until)
    assert sorted(e.id for e in again) == ids


async def test_extend_lease_answers_only_the_rows_still_held(outbox: Outbox) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    [stale] = await _lease_all(outbox)
    [current] = await _lease_all(outbox, T0 + LEASE)
    later = T0 + LEASE + 1
    assert (
        await outbox.extend_lease(
            [stale.id], until=later + LEASE, now=later, lease_id=stale.lease_id
        )
        == []
    )
    assert await outbox.extend_lease(
        [current.id], until=later + LEASE, now=later, lease_id=current.lease_id
    ) == [current.id]
    assert await outbox.extend_lease(
        [current.id, 999], until=later + 60, now=later, lease_id=current.lease_id
    ) == [current.id]


async def test_extend_lease_takes_back_a_lapsed_lease_nobody_took(outbox: Outbox) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    [held] = await _lease_all(outbox)
    late = T0 + 2 * LEASE
    assert await outbox.extend_lease(
        [held.id], until=late + LEASE, now=late, lease_id=held.lease_id
    ) == [held.id]
    assert await _lease_all(outbox, late) == []


async def test_extend_lease_must_end_in_the_future(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="after now"):
        await outbox.extend_lease([1], until=T0, now=T0, lease_id="any")


# ----------------------------------------------------------- dedup while queued


@pytest.mark.parametrize("leased", [False, True], ids=["queued", "leased"])
async def test_a_key_is_kept_while_its_event_is_in_the_queue(outbox: Outbox, leased: bool) -> None:
    await outbox.enqueue([make_event("held")], now=T0)
    if leased:
        await _lease_all(outbox)
    later = T0 + DEDUP_WINDOW_SECONDS + 3600  # a breaker kept it queued past the window
    assert await outbox.expire_dedup(now=later) == 0
    assert await outbox.enqueue([make_event("held")], now=later) == [DUPLICATE]
    assert (await outbox.stats(now=later)).depth == 1


async def test_a_delivered_key_expires_after_the_window(outbox: Outbox) -> None:
    await outbox.enqueue([make_event("sent")], now=T0)
    [leased] = await _lease_all(outbox)
    await outbox.ack([leased.id], now=T0 + 1, lease_id=leased.lease_id)
    assert await outbox.enqueue([make_event("sent")], now=T0 + 60) == [DUPLICATE]
    assert await outbox.expire_dedup(now=T0 + DEDUP_WINDOW_SECONDS + 1) == 1
    assert await outbox.enqueue([make_event("sent")], now=T0 + DEDUP_WINDOW_SECONDS + 2) == [QUEUED]


async def test_an_old_delivered_key_is_taken_over_at_enqueue(outbox: Outbox) -> None:
    await outbox.enqueue([make_event("sent")], now=T0)
    [leased] = await _lease_all(outbox)
    await outbox.ack([leased.id], now=T0 + 1, lease_id=leased.lease_id)
    later = T0 + DEDUP_WINDOW_SECONDS
    assert await outbox.enqueue([make_event("sent"), make_event("sent")], now=later) == [
        QUEUED,
        DUPLICATE,
    ]


# ----------------------------------------------------------- DLQ re-queue dedup


async def test_requeue_skips_a_letter_whose_corrected_resend_is_queued(outbox: Outbox) -> None:
    letter = await _dead_letter_one(outbox, "order-1")
    assert await outbox.enqueue([make_event("order-1")], now=T0 + 10) == [QUEUED]  # the resend
    result = await outbox.dlq_requeue([letter], now=T0 + 20)
    assert result == RequeueResult(requeued=[], duplicate=[letter])
    assert [d.id for d in await outbox.dlq_list()] == [letter]
    assert (await outbox.stats(now=T0 + 20)).depth == 1


async def test_requeue_skips_a_letter_whose_resend_was_delivered_inside_the_window(
    outbox: Outbox,
) -> None:
    letter = await _dead_letter_one(outbox, "order-1")
    await outbox.enqueue([make_event("order-1")], now=T0 + 10)
    [resend] = await _lease_all(outbox, T0 + 10)
    await outbox.ack([resend.id], now=T0 + 11, lease_id=resend.lease_id)
    assert (await outbox.dlq_requeue([letter], now=T0 + 20)).duplicate == [letter]
    after_window = T0 + 10 + DEDUP_WINDOW_SECONDS
    assert await outbox.dlq_requeue([letter], now=after_window) == RequeueResult([letter], [])


async def test_requeue_of_letters_sharing_a_key_moves_the_first_only(outbox: Outbox) -> None:
    first = await _dead_letter_one(outbox, "twice")
    second = await _dead_letter_one(outbox, "twice", now=T0 + 5)
    other = await _dead_letter_one(outbox, "other", now=T0 + 6)
    result = await outbox.dlq_requeue([second, other, first, 424242], now=T0 + 50)
    assert result == RequeueResult(requeued=[first, other], duplicate=[second])
    queued = await _lease_all(outbox, T0 + 50)
    assert sorted(e.event_id for e in queued) == ["other", "twice"]
    assert [d.id for d in await outbox.dlq_list()] == [second]
    # The re-queued letter holds its key again: a client retry is a duplicate.
    assert await outbox.enqueue([make_event("twice")], now=T0 + 60) == [DUPLICATE]
