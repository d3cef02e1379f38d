"""Stripe webhooks: ``checkout.session.completed`` / ``payment_intent.succeeded`` → Purchase.

Stripe signs each delivery with ``Stripe-Signature: t=<unix>,v1=<hex>[,v1=...]``:
``v1`` is the hex HMAC-SHA256 of ``"{t}.{raw body}"`` keyed with the
endpoint's signing secret (``whsec_...``).  Several ``v1`` values appear while
a secret is being rolled; any one matching is enough.  ``t`` must be within
``tolerance_seconds`` of now (300 by default, as Stripe's own libraries), so
a captured delivery cannot be replayed later.  The topic is the event's
``type`` in the body.

Amounts are in the currency's minor unit; the mapping divides by 10^exponent
(JPY 0, KWD 3, most 2).  Both topics use the PaymentIntent id in the event
id (``stripe:{pi_...}:Purchase``), so a shop subscribed to both sends one
Purchase per payment.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from capirelay.sources.webhooks._base import (
    Headers,
    SignatureError,
    WebhookPreset,
    header,
    hmac_sha256,
)

__all__ = [
    "IDENTIFIER_HINTS",
    "PRESET",
    "SIGNATURE_HEADER",
    "sign",
    "test_mode",
    "topic",
    "verify",
]

SIGNATURE_HEADER = "stripe-signature"


def _parse(value: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in value.split(","):
        key, _, part = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(part)
            except ValueError:
                raise SignatureError("Stripe-Signature has a non-numeric t=") from None
        elif key == "v1" and part:
            signatures.append(part)
    if timestamp is None:
        raise SignatureError("Stripe-Signature has no t= timestamp")
    if not signatures:
        raise SignatureError("Stripe-Signature has no v1= signature")
    return timestamp, signatures


def verify(
    body: bytes, headers: Headers, secret: str, *, now: float, tolerance_seconds: int
) -> None:
    """Raise :class:`SignatureError` unless a ``v1`` matches and ``t`` is fresh."""
    value = header(headers, SIGNATURE_HEADER)
    if value is None:
        raise SignatureError("missing Stripe-Signature header; the request is not signed")
    timestamp, signatures = _parse(value)
    expected = hmac_sha256(secret, f"{timestamp}.".encode() + body).hex().encode()
    # Compare against every v1 so the time taken does not depend on which one matched.
    matched = False
    for signature in signatures:
        matched |= hmac.compare_digest(expected, signature.encode("ascii", "replace"))
    if not matched:
        raise SignatureError("no v1 in Stripe-Signature matches the body and signing secret")
    if abs(now - timestamp) > tolerance_seconds:
        raise SignatureError(
            f"Stripe-Signature timestamp is more than {tolerance_seconds} s from now "
            "(a replayed delivery, or a clock out of sync)"
        )


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` value Stripe would send; for tests and local replays."""
    return f"t={timestamp},v1={hmac_sha256(secret, f'{timestamp}.'.encode() + body).hex()}"


def topic(headers: Headers, payload: Any) -> str | None:
    kind = payload.get("type") if isinstance(payload, dict) else None
    return kind if isinstance(kind, str) else None


def test_mode(payload: Any) -> str | None:
    """``"livemode: false"`` for an event of Stripe's test mode (test keys, ``stripe
    trigger``, the dashboard's test data); ``None`` for a live one."""
    return (
        "livemode: false"
        if isinstance(payload, dict) and payload.get("livemode") is False
        else None
    )


IDENTIFIER_HINTS = {
    "payment_intent.succeeded": (
        "a guest PaymentIntent carries no customer: put email/phone (metadata keys email, "
        "phone, first_name, last_name, city, state, zip, country, external_id) in its metadata, "
        "or also subscribe to checkout.session.completed, whose customer_details carry them"
    ),
    "checkout.session.completed": (
        "collect the email or phone in Checkout (customer_details), or pass them in the "
        "session's metadata (email, phone, ...)"
    ),
}

PRESET = WebhookPreset(
    name="stripe",
    verify=verify,
    topic=topic,
    mapping_path=Path(__file__).with_name("mapping.toml"),
    identifier_hints=IDENTIFIER_HINTS,
    test_mode=test_mode,
)
