"""``custom_data.order_id`` is read by one function, :func:`capirelay.orders.order_id_of`, for
the order ledger (on the prepared wire payload) and for a rejected webhook event's receipt
(on the mapped event, which has no wire payload): both must name the same order.  That the
receipt is keyed by this reading is tested end to end in
tests/sources/test_webhooks_gateway.py
(test_a_rejected_webhook_events_receipt_is_found_by_order_id_of_the_event)."""

from __future__ import annotations

from typing import Any

import pytest

from capirelay.events._prepare import prepare_wire
from capirelay.orders import order_id_of


def _event(order_id: Any) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": 1,
        "action_source": "website",
        "custom_data": {"order_id": order_id, "value": 1, "currency": "USD"},
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A-1001", "A-1001"),
        ("  1001 ", "1001"),
        (1001, "1001"),
        (1001.0, "1001.0"),  # what prepare_wire puts on the wire (str of the number)
        (1e20, "1e+20"),
        ("", None),
        ("   ", None),
        (None, None),
        (True, None),
        ({"id": 1}, None),
        ([1001], None),
    ],
)
def test_the_mapped_event_and_its_wire_payload_name_the_same_order(
    raw: Any, expected: str | None
) -> None:
    assert order_id_of(_event(raw)) == expected
    try:
        wire = prepare_wire(_event(raw), default_country=None).payload
    except ValueError:  # pydantic refuses it: only the mapped event is left (a rejection)
        return
    assert order_id_of(wire) == expected


def test_no_custom_data_or_not_an_object_is_no_order() -> None:
    assert order_id_of({"event_name": "Purchase"}) is None
    assert order_id_of({"custom_data": "1001"}) is None
