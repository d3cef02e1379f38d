"""The order ledger on every backend (contract suite): an order is queued once for the
ledger's retention, not only for the 48 h dedup window; dead letters keep their entry; a
DLQ replay resends."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from outbox_data import T0, make_event

from capirelay.orders import order_key
from capirelay.outbox import DEDUP_WINDOW_SECONDS, Outbox
from capirelay.outbox.base import DeadLetterReason, EnqueueStatus, NewEvent

pytestmark = pytest.mark.outbox_contract

QUEUED, DUPLICATE = EnqueueStatus.QUEUED, EnqueueStatus.DUPLICATE
DAY = 86400.0


def order_event(event_id: str, order_id: str, *, pixel_id: str = "111") -> NewEvent:
    payload = {
        "event_name": "Purchase",
        "event_id": event_id,
        "custom_data": {"order_id": order_id},
    }
    key = order_key(pixel_id, payload, test_event_code=None)
    return replace(make_event(event_id, pixel_id=pixel_id), order_key=key)


async def _deliver_all(box: Outbox, now: float) -> list[int]:
    leased = await box.lease("111", limit=100, lease_seconds=60, now=now)
    await box.ack([e.id for e in leased], now=now, lease_id=leased[0].lease_id)
    return [e.id for e in leased]


async def test_an_order_is_a_duplicate_long_after_the_dedup_window(outbox: Outbox) -> None:
    assert await outbox.enqueue([order_event("woocommerce:731:Purchase", "731")], now=T0) == [
        QUEUED
    ]
    await _deliver_all(outbox, T0 + 1)
    later = T0 + 5 * DAY  # the order is completed days after payment
    assert await outbox.expire_dedup(now=later) == 1  # the 48 h dedup row is gone
    again = order_event("woocommerce:731:Purchase", "731")
    assert await outbox.enqueue([again], now=later) == [DUPLICATE]
    # Another id for the same order (a backend resending it) is the same order.
    assert await outbox.enqueue([order_event("backend-731", "731")], now=later) == [DUPLICATE]
    assert await outbox.lease("111", limit=10, lease_seconds=60, now=later) == []
    # Events without an order key still follow the 48 h window only.
    plain = make_event("page-view-1")
    assert await outbox.enqueue([plain], now=T0) == [QUEUED]
    await _deliver_all(outbox, T0 + 1)
    assert await outbox.enqueue([plain], now=T0 + DEDUP_WINDOW_SECONDS + 1) == [QUEUED]


async def test_one_call_and_other_orders(outbox: Outbox) -> None:
    events = [
        order_event("a", "1"),
        order_event("b", "1"),  # same order, another id: the first wins
        order_event("c", "2"),
        make_event("d"),
        order_event("e", "3", pixel_id="222"),  # order 3 of another pixel
        order_event("f", "3"),
    ]
    assert await outbox.enqueue(events, now=T0) == [
        QUEUED,
        DUPLICATE,
        QUEUED,
        QUEUED,
        QUEUED,
        QUEUED,
    ]
    assert await outbox.order_ledger_size() == 4


async def test_an_event_id_repeated_after_a_known_order_is_queued_by_its_second_use(
    outbox: Outbox,
) -> None:
    """The first occurrence of an event id wins, among the events the ledger lets
    through: when that first one is an order already sent, the next one queues."""
    assert await outbox.enqueue([order_event("x", "5")], now=T0) == [QUEUED]
    again = [
        order_event("y", "5"),  # order 5 again: turned away by the ledger
        order_event("y", "6"),  # same event id, a new order: the first to get through
        make_event("y"),  # same event id, no order: a duplicate of the one before
        order_event("z", "7"),
        make_event("z"),  # a duplicate of the (new) order 7 before it
    ]
    assert await outbox.enqueue(again, now=T0 + 1) == [
        DUPLICATE,
        QUEUED,
        DUPLICATE,
        QUEUED,
        DUPLICATE,
    ]
    leased = await outbox.lease("111", limit=10, lease_seconds=60, now=T0 + 2)
    assert sorted(e.event_id for e in leased) == ["x", "y", "z"]
    assert await outbox.order_ledger_size() == 3
    # The same request with nothing known: each event id's first occurrence queues.
    fresh = [
        order_event("y", "5", pixel_id="222"),
        order_event("y", "6", pixel_id="222"),
        make_event("y", pixel_id="222"),
        order_event("z", "7", pixel_id="222"),
        make_event("z", pixel_id="222"),
    ]
    assert await outbox.enqueue(fresh, now=T0 + 3) == [
        QUEUED,
        DUPLICATE,
        DUPLICATE,
        QUEUED,
        DUPLICATE,
    ]


async def test_an_order_whose_event_id_came_first_without_one_is_still_recorded(
    outbox: Outbox,
) -> None:
    """The browser's Purchase (no order id) and the shop's (order 5) share an event id:
    the second is a duplicate, and its order is in the ledger all the same, so the
    order sent again under another event id is a duplicate too."""
    assert await outbox.enqueue([make_event("p"), order_event("p", "5")], now=T0) == [
        QUEUED,
        DUPLICATE,
    ]
    assert await outbox.order_ledger_size() == 1
    assert await outbox.enqueue([order_event("backend-5", "5")], now=T0 + 1) == [DUPLICATE]


async def test_the_same_from_two_requests_at_once(outbox: Outbox) -> None:
    """Two requests in one event-loop iteration (one statement group on PostgreSQL)."""
    first, second = await asyncio.gather(
        outbox.enqueue([make_event("p")], now=T0),
        outbox.enqueue([order_event("p", "5")], now=T0),
    )
    assert (first, second) == ([QUEUED], [DUPLICATE])
    assert await outbox.order_ledger_size() == 1
    assert await outbox.enqueue([order_event("backend-5", "5")], now=T0 + 1) == [DUPLICATE]


async def test_a_dead_letter_keeps_its_order_and_only_a_replay_resends(outbox: Outbox) -> None:
    assert await outbox.enqueue([order_event("shopify:9:Purchase", "9")], now=T0) == [QUEUED]
    [leased] = await outbox.lease("111", limit=10, lease_seconds=60, now=T0)
    await outbox.dead_letter(
        [leased.id],
        reason=DeadLetterReason.EXPIRED,
        attempt=None,
        now=T0 + 1,
        lease_id=leased.lease_id,
    )
    # The dedup key is forgotten with the dead letter; the order is not.
    assert await outbox.enqueue([order_event("shopify:9:Purchase", "9")], now=T0 + 2) == [DUPLICATE]
    [letter] = await outbox.dlq_list()
    result = await outbox.dlq_requeue([letter.id], now=T0 + 3)
    assert result.requeued == [letter.id]
    [resent] = await outbox.lease("111", limit=10, lease_seconds=60, now=T0 + 3)
    assert resent.event_id == "shopify:9:Purchase"


async def test_pruned_after_retention_and_beyond_the_cap(outbox: Outbox) -> None:
    for day in range(5):
        event = order_event(f"o{day}", str(day))
        assert await outbox.enqueue([event], now=T0 + day * DAY) == [QUEUED]
    assert await outbox.order_ledger_size() == 5
    now = T0 + 10 * DAY
    # Retention 8.5 days: orders 0 and 1 (10 and 9 days old) go.
    removed = await outbox.prune_order_ledger(now=now, retention_seconds=8.5 * DAY, max_entries=100)
    assert removed == 2
    assert await outbox.order_ledger_size() == 3
    # A cap of 2 keeps the two newest (orders 3 and 4).
    removed = await outbox.prune_order_ledger(now=now, retention_seconds=30 * DAY, max_entries=2)
    assert removed == 1
    assert await outbox.order_ledger_size() == 2
    await outbox.expire_dedup(now=now)
    await _deliver_all(outbox, now)
    await outbox.expire_dedup(now=now + DEDUP_WINDOW_SECONDS + 1)
    later = now + DEDUP_WINDOW_SECONDS + 1
    # A pruned order can be queued again; a kept one cannot.
    assert await outbox.enqueue([order_event("o2-again", "2")], now=later) == [QUEUED]
    assert await outbox.enqueue([order_event("o4-again", "4")], now=later) == [DUPLICATE]


@pytest.mark.parametrize("value", [None, "", "  ", True, {"x": 1}, [731]])
def test_no_order_key_without_an_order_id(value: object) -> None:
    payload = {"event_name": "Purchase", "event_id": "x", "custom_data": {"order_id": value}}
    assert order_key("111", payload, test_event_code=None) is None


def test_a_number_is_keyed_as_the_text_the_wire_carries() -> None:
    # prepare_wire stores a numeric order_id as its text (1.5 -> "1.5"), and the ledger
    # only ever sees the wire; a raw number keys as that text (capirelay.orders.order_id_of).
    def key(value: object) -> bytes | None:
        payload = {"event_name": "Purchase", "event_id": "x", "custom_data": {"order_id": value}}
        return order_key("111", payload, test_event_code=None)

    assert key(1.5) == key("1.5") is not None


def test_order_keys_are_hashed_and_scoped() -> None:
    payload = {"event_name": "Purchase", "event_id": "x", "custom_data": {"order_id": "731"}}
    key = order_key("111", payload, test_event_code=None)
    assert key is not None and len(key) == 16 and b"731" not in key
    assert order_key(
        "111", {**payload, "custom_data": {"order_id": 731}}, test_event_code=None
    ) == (key)
    # Another pixel, event name or a test event is another entry.
    assert order_key("222", payload, test_event_code=None) != key
    assert order_key("111", {**payload, "event_name": "Refund"}, test_event_code=None) != key
    assert order_key("111", payload, test_event_code="TEST1") != key
    # A preset's event without an order id is keyed by its event id; others have none.
    bare = {"event_name": "Purchase", "event_id": "stripe:pi_1:Purchase"}
    assert order_key("111", bare, test_event_code=None) is None
    assert order_key("111", bare, test_event_code=None, by_event_id=True) is not None
