"""Verified beacon events: a short-lived token the shop's server signs for one event.

The browser beacon (``POST /v1/collect``) is public, so anyone can post a
``Purchase`` of any value.  A shop that wants Meta to trust a browser-side
purchase has its server sign it when it renders the thank-you page; the page
passes the token to ``capirelay.track(..., {eventId, token})`` and the
gateway checks it against the event it receives.

The token is ``v1.<expires>.<signature>``: ``expires`` in unix seconds, and the
signature the unpadded base64url HMAC-SHA256, keyed with the pixel's
``verification_secret``, of this canonical string (UTF-8, ``\\n`` between
lines, no trailing newline)::

    capirelay-beacon-v1
    <pixel id>
    <event name>
    <event_id>
    <value>        decimal string with the currency's minor units: 25.00 EUR,
                   1000 JPY, 1.500 KWD; empty when the event has no value
    <currency>     ISO 4217, upper case; empty when the event has none
    <expires>      the same unix seconds as in the token

Exponents: 0 for BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF
XPF, 3 for BHD JOD KWD OMR TND, 2 for every other code.  A value with more
decimals than its currency allows cannot be signed (it would be rounded, and a
rounded value is a value the page could change unnoticed).

A token binds the ``event_id``, so a replayed token is a replayed event: the
gateway's 48 h dedup answers it ``duplicate``.  That is why a token may not
live longer than :data:`MAX_TOKEN_LIFETIME` (the dedup window).  Signatures
are compared in constant time; nothing here logs or echoes a token or secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from capirelay.meta_facts import DEDUP_WINDOW_SECONDS
from capirelay.sources._transforms import currency_exponent

__all__ = [
    "DEFAULT_TOKEN_TTL",
    "MAX_TOKEN_LIFETIME",
    "TokenError",
    "canonical_string",
    "format_amount",
    "mint_beacon_token",
    "verify_beacon_token",
]

TOKEN_VERSION = "v1"
CANONICAL_PREFIX = "capirelay-beacon-v1"
DEFAULT_TOKEN_TTL = 3600
MAX_TOKEN_LIFETIME = DEDUP_WINDOW_SECONDS  # a replay inside it is a duplicate
_TOKEN_RE = re.compile(r"^v1\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})$")


class TokenError(ValueError):
    """A token the gateway refuses: ``code`` is stable, ``message`` names the fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def format_amount(value: Any, currency: str | None) -> str:
    """``value`` as the canonical decimal string for ``currency`` (``""`` for no value).

    Raises :class:`ValueError` for a value that is not a number or has more
    decimals than the currency's minor units.
    """
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError("value must be a number or a decimal string")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError("value must be a number or a decimal string") from None
    if not amount.is_finite():
        raise ValueError("value must be a finite number")
    code = _currency(currency)
    exponent = currency_exponent(code) if code else 2
    try:
        quantized = amount.quantize(Decimal(1).scaleb(-exponent))
    except InvalidOperation:
        raise ValueError("value is too large") from None
    if quantized != amount:
        raise ValueError(
            f"value has more decimals than {code or 'the default'} allows ({exponent}); "
            "round it the way the order total is shown before signing"
        )
    return str(quantized)


def _currency(currency: str | None) -> str:
    return currency.strip().upper() if currency else ""


def canonical_string(
    *,
    pixel_id: str,
    event_name: str,
    event_id: str,
    value: Any,
    currency: str | None,
    expires: int,
) -> str:
    """The string a token signs; see the module docstring."""
    lines = (
        CANONICAL_PREFIX,
        pixel_id,
        event_name,
        event_id,
        format_amount(value, currency),
        _currency(currency),
        str(int(expires)),
    )
    for line in lines:
        if "\n" in line:
            raise ValueError("pixel_id, event_name and event_id may not contain a newline")
    return "\n".join(lines)


def _signature(secret: str, canonical: str) -> bytes:
    return hmac.new(secret.encode(), canonical.encode(), hashlib.sha256).digest()


def mint_beacon_token(
    secret: str,
    *,
    pixel_id: str,
    event_name: str,
    event_id: str,
    value: Any = None,
    currency: str | None = None,
    ttl_seconds: int = DEFAULT_TOKEN_TTL,
    now: float | None = None,
) -> str:
    """A token vouching for one beacon event, valid ``ttl_seconds`` (at most 48 h).

    ``value`` and ``currency`` are the ones the page will send in ``custom_data``.
    """
    if not secret:
        raise ValueError("secret is empty: use the pixel's verification_secret")
    if not event_id:
        raise ValueError("event_id is required: the token binds it (and replays dedup on it)")
    if not 0 < ttl_seconds <= MAX_TOKEN_LIFETIME:
        raise ValueError(f"ttl_seconds must be between 1 and {MAX_TOKEN_LIFETIME}")
    expires = int(time.time() if now is None else now) + ttl_seconds
    canonical = canonical_string(
        pixel_id=pixel_id,
        event_name=event_name,
        event_id=event_id,
        value=value,
        currency=currency,
        expires=expires,
    )
    signature = base64.urlsafe_b64encode(_signature(secret, canonical)).rstrip(b"=").decode()
    return f"{TOKEN_VERSION}.{expires}.{signature}"


def verify_beacon_token(
    token: str,
    secret: str,
    *,
    pixel_id: str,
    event_name: str,
    event_id: str,
    value: Any,
    currency: str | None,
    now: float | None = None,
) -> None:
    """Check ``token`` against the event; :class:`TokenError` says why it is refused."""
    match = _TOKEN_RE.match(token)
    if match is None:
        raise TokenError(
            "token_malformed",
            "token is not a capirelay beacon token (v1.<expires>.<signature>); pass the "
            "string your server minted, unchanged",
        )
    expires = int(match.group(1))
    current = time.time() if now is None else now
    if current > expires:
        raise TokenError(
            "token_expired",
            "token has expired; mint a new one when the page is rendered (a few minutes' "
            "lifetime is enough)",
        )
    if expires - current > MAX_TOKEN_LIFETIME:
        raise TokenError(
            "token_lifetime",
            "token lives longer than 48 h (the dedup window that makes replays harmless); "
            "mint it with a shorter lifetime",
        )
    presented = base64.urlsafe_b64decode(match.group(2) + "=")
    try:
        canonical = canonical_string(
            pixel_id=pixel_id,
            event_name=event_name,
            event_id=event_id,
            value=value,
            currency=currency,
            expires=expires,
        )
    except ValueError:
        canonical = ""  # unsignable value: compare anyway so timing says nothing
    expected = _signature(secret, canonical)
    if not hmac.compare_digest(expected, presented) or not canonical:
        raise TokenError(
            "token_mismatch",
            "token does not match this event: the page's pixel, event_name, event_id, "
            "custom_data.value or custom_data.currency differ from what the server signed",
        )
