"""Shopify webhooks: ``orders/paid`` → Purchase, ``checkouts/create`` → InitiateCheckout.

Shopify signs each delivery with ``X-Shopify-Hmac-Sha256``: the base64
HMAC-SHA256 of the raw body, keyed with the app's client secret (or the
secret shown under Settings → Notifications → Webhooks for a store-created
webhook).  The topic is ``X-Shopify-Topic``.  Any other topic (refunds,
``orders/create`` of an unpaid order, ...) matches no rule and is answered
200 "ignored" (``no_rule_for_topic``), so Shopify does not retry it; an
``orders/paid`` order that is not ``paid`` (Shopify's "Send test
notification" sample is ``voided``) is "ignored" too, as ``condition_false``.
The default mapping is ``mapping.toml`` beside this file; event ids are
``shopify:{order id}:Purchase`` and ``shopify:{checkout id}:InitiateCheckout``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capirelay.sources.webhooks._base import (
    Headers,
    WebhookPreset,
    header,
    verify_base64_hmac,
)

__all__ = ["PRESET", "SIGNATURE_HEADER", "TOPIC_HEADER", "test_mode", "topic", "verify"]

SIGNATURE_HEADER = "x-shopify-hmac-sha256"
TOPIC_HEADER = "x-shopify-topic"


def verify(
    body: bytes, headers: Headers, secret: str, *, now: float, tolerance_seconds: int
) -> None:
    """Raise :class:`SignatureError` unless the body carries Shopify's HMAC for ``secret``."""
    verify_base64_hmac(body, headers, SIGNATURE_HEADER, secret)


def topic(headers: Headers, payload: Any) -> str | None:
    return header(headers, TOPIC_HEADER)


def test_mode(payload: Any) -> str | None:
    """``"test: true"`` for a test order (a test payment gateway, Bogus Gateway, or
    Shopify's sample notification); ``None`` for a real one."""
    return "test: true" if isinstance(payload, dict) and payload.get("test") is True else None


PRESET = WebhookPreset(
    name="shopify",
    verify=verify,
    topic=topic,
    mapping_path=Path(__file__).with_name("mapping.toml"),
    test_mode=test_mode,
)
