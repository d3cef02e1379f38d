"""WooCommerce webhooks: an order in ``processing`` or ``completed`` → Purchase.

WooCommerce signs each delivery with ``X-WC-Webhook-Signature``: the base64
HMAC-SHA256 of the raw body keyed with the webhook's secret; the topic is
``X-WC-Webhook-Topic`` (``order.created``, ``order.updated``).  Subscribe to
both: the Purchase rule fires only for a paid status, never for ``pending``,
``on-hold``, ``cancelled``, ``failed`` or ``refunded``, and the
``woocommerce:{order id}:Purchase`` event id makes the later ``completed``
update a duplicate of the earlier ``processing`` one.

When a webhook is created or activated, WooCommerce sends an unsigned ping
whose form body is ``webhook_id=<n>``; it is answered 200 so the webhook is
saved, and nothing is queued.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from capirelay.sources.webhooks._base import (
    Headers,
    WebhookPreset,
    header,
    verify_base64_hmac,
)

__all__ = ["PRESET", "SIGNATURE_HEADER", "TOPIC_HEADER", "is_ping", "topic", "verify"]

SIGNATURE_HEADER = "x-wc-webhook-signature"
TOPIC_HEADER = "x-wc-webhook-topic"
_PING_BODY = re.compile(rb"webhook_id=[0-9]+")


def verify(
    body: bytes, headers: Headers, secret: str, *, now: float, tolerance_seconds: int
) -> None:
    """Raise :class:`SignatureError` unless the body carries WooCommerce's HMAC for ``secret``."""
    verify_base64_hmac(body, headers, SIGNATURE_HEADER, secret)


def topic(headers: Headers, payload: Any) -> str | None:
    return header(headers, TOPIC_HEADER)


def is_ping(body: bytes, headers: Headers) -> bool:
    """WooCommerce's creation ping: exactly ``webhook_id=<digits>``, nothing else to act on."""
    return _PING_BODY.fullmatch(body.strip()) is not None


PRESET = WebhookPreset(
    name="woocommerce",
    verify=verify,
    topic=topic,
    mapping_path=Path(__file__).with_name("mapping.toml"),
    is_ping=is_ping,
)
