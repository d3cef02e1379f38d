"""The ``mapping`` preset: any sender that can sign with HMAC, mapped by the user's own file.

For systems without a preset (a CRM, a payment processor, an in-house
backend): the sender puts ``X-Capirelay-Signature: sha256=<hex>`` on each
request, the hex HMAC-SHA256 of the raw body keyed with the webhook's secret
(the scheme GitHub uses), and optionally ``X-Capirelay-Topic`` to pick rules.
The mapping file is required (``mapping = "..."`` in the webhook's config).
"""

from __future__ import annotations

import hmac
from typing import Any

from capirelay.sources.webhooks._base import (
    Headers,
    SignatureError,
    WebhookPreset,
    header,
    hmac_sha256,
)

__all__ = ["PRESET", "SIGNATURE_HEADER", "TOPIC_HEADER", "sign", "topic", "verify"]

SIGNATURE_HEADER = "x-capirelay-signature"
TOPIC_HEADER = "x-capirelay-topic"
_PREFIX = "sha256="


def verify(
    body: bytes, headers: Headers, secret: str, *, now: float, tolerance_seconds: int
) -> None:
    """Raise :class:`SignatureError` unless the header is ``sha256=`` + the body's hex HMAC."""
    given = header(headers, SIGNATURE_HEADER)
    if given is None:
        raise SignatureError("missing X-Capirelay-Signature header; the request is not signed")
    expected = sign(body, secret).encode()
    if not hmac.compare_digest(expected, given.encode("ascii", "replace")):
        raise SignatureError("X-Capirelay-Signature does not match the body and secret")


def sign(body: bytes, secret: str) -> str:
    """The header value a sender computes: ``sha256=`` + hex HMAC-SHA256 of the body."""
    return _PREFIX + hmac_sha256(secret, body).hex()


def topic(headers: Headers, payload: Any) -> str | None:
    return header(headers, TOPIC_HEADER)


PRESET = WebhookPreset(
    name="mapping",
    verify=verify,
    topic=topic,
    mapping_path=None,
)
