"""The order ledger's keys: one sale reaches Meta once per order, not once per 48 hours.

Meta deduplicates a browser and a server copy of one event for 48 hours, and
the outbox remembers ``(pixel_id, event_name, event_id)`` for the same window.
Orders outlive that window: WooCommerce marks an order ``completed`` days
after payment, Shopify sends order updates for weeks, Stripe events are
replayed from the dashboard, a backend resends an old order.  A second
``Purchase`` after 48 hours is a double-counted sale.

So order events also get an entry in the outbox's order ledger, kept for
``order_ledger.retention_days`` (default 400: refunds and late fulfilment).
An order event is:

* any event with ``custom_data.order_id``: keyed by pixel, event name, test
  event code and that order id;
* an event of a vendor webhook preset (``shopify``, ``woocommerce``,
  ``stripe``) without one: keyed by its event id, which the preset derives
  from the vendor's order or payment id.

Not every explicit ``event_id``: that would be a row per event for a year.
The ledger stores only :func:`order_key`, 16 bytes of a SHA-256 digest, never
the order id itself.  An entry is written when the event is accepted and is
kept when the event is dead-lettered or expires: ``capirelay dlq replay`` is
then the one way to send it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ORDER_KEY_BYTES",
    "ORDER_PRESETS",
    "UNVERIFIED_ID_PREFIX",
    "order_id_of",
    "order_key",
    "public_event_id",
    "unverified_order_key",
]

ORDER_PRESETS = frozenset({"shopify", "woocommerce", "stripe"})
ORDER_KEY_BYTES = 16  # 128 bits: no collision in any ledger size that fits on a disk
_DOMAIN = "capirelay-order-ledger-v1"
_ORDER_ID_TYPES = (str, int, float)  # a tuple: a union in the call is built on every call

# Unverified claims.  An event from the public beacon without a valid verification token
# (anyone can send one) claims its keys in a namespace of its own, so that it never makes
# an authenticated event (ingest key, signed webhook, import, verified beacon) a
# duplicate, in the 48 h dedup or in the order ledger.  Its queue row (and so its dedup
# row) carries this prefix before its event_id: a control character, which no accepted
# event_id holds (capirelay.limits), so no authenticated key can take this form.  Its
# wire payload keeps the real event_id.  Rows stored before this namespace existed have
# no prefix and no unverified ledger key: they read as authenticated claims.
UNVERIFIED_ID_PREFIX = "\x1fu:"
_UNVERIFIED_DOMAIN = b"capirelay-order-ledger-unverified-v1\x00"


def order_id_of(event: Mapping[str, Any]) -> str | None:
    """An event's ``custom_data.order_id`` as the text that names the order, or ``None``.

    The one reading of an order id, for the ledger's key (on the prepared wire payload)
    and for the receipt of a webhook's event rejected at ingest (on the mapped event,
    which has no wire payload): both must name the same order.  So a number counts as
    its text, as ``prepare_wire`` puts it on the wire (``1001`` → ``"1001"``,
    ``1001.0`` → ``"1001.0"``); surrounding blanks are not part of it; a bool, an
    object, a list or blank text is no order id.
    """
    custom = event.get("custom_data")
    if type(custom) is not dict and not isinstance(custom, Mapping):
        return None
    value = custom.get("order_id")
    if value is None or isinstance(value, bool) or not isinstance(value, _ORDER_ID_TYPES):
        return None
    text = str(value).strip()
    return text or None


def order_key(
    pixel_id: str,
    payload: Mapping[str, Any],
    *,
    test_event_code: str | None,
    by_event_id: bool = False,
) -> bytes | None:
    """The ledger key of a wire event, or ``None`` when it is no order event.

    ``by_event_id``: the event comes from a vendor webhook preset, whose event id
    names the order, so it is an order event even without ``custom_data.order_id``.
    Test events (``test_event_code``) get keys of their own, so testing an order
    never blocks the live one.
    """
    order_id = order_id_of(payload)
    if order_id is not None:
        reference = "order_id\x00" + order_id
    elif by_event_id and isinstance(payload.get("event_id"), str):
        reference = "event_id\x00" + payload["event_id"]
    else:
        return None
    material = "\x00".join(
        (_DOMAIN, pixel_id, str(payload.get("event_name", "")), test_event_code or "", reference)
    )
    return hashlib.sha256(material.encode("utf-8")).digest()[:ORDER_KEY_BYTES]


def unverified_order_key(key: bytes) -> bytes:
    """The ledger key an unverified beacon event claims in place of :func:`order_key`'s."""
    return hashlib.sha256(_UNVERIFIED_DOMAIN + key).digest()[:ORDER_KEY_BYTES]


def public_event_id(stored: str) -> str:
    """A stored event_id as its sender gave it: the unverified namespace's prefix removed."""
    return stored.removeprefix(UNVERIFIED_ID_PREFIX)
