"""What every webhook preset is made of, and the HMAC checks they share.

A preset is data plus four small functions: ``verify`` (the vendor's
signature scheme, on the raw bytes, before anything is parsed), ``topic``
(which kind of notification this is), ``is_ping`` (a setup handshake to
answer 200 without queueing anything) and ``test_mode`` (the field that
marks a test order or payment, which must not reach Meta as a live
conversion: Meta counts events without a ``test_event_code`` as real).
Its default mapping is a TOML file beside its module, loaded once.

Comparisons go through :func:`hmac.compare_digest` so the time taken does not
reveal how much of a forged signature was right.  :class:`SignatureError`
reasons say what was wrong with the request, never the secret or the
expected signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from capirelay.problems import Problem, warning
from capirelay.sources.mapping import EventMapping, load_mapping

__all__ = [
    "SignatureError",
    "Verifier",
    "WebhookPreset",
    "header",
    "hmac_sha256",
    "identifier_hint",
    "verify_base64_hmac",
    "webhook_advice",
]

# Headers arrive as a case-insensitive mapping (Starlette's Headers) or a dict
# with lowercase keys; presets look names up in lowercase.
Headers = Mapping[str, str]


class SignatureError(Exception):
    """The request is not provably from the vendor; ``reason`` is safe to log and return."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Verifier(Protocol):
    def __call__(
        self, body: bytes, headers: Headers, secret: str, *, now: float, tolerance_seconds: int
    ) -> None: ...


def _never_a_ping(body: bytes, headers: Headers) -> bool:
    return False


def _never_a_test(payload: Any) -> str | None:
    return None


@dataclass(frozen=True, slots=True)
class WebhookPreset:
    """One webhook source: its signature scheme, topic, handshake and default mapping."""

    name: str
    verify: Verifier
    topic: Callable[[Headers, Any], str | None]
    mapping_path: Path | None
    is_ping: Callable[[bytes, Headers], bool] = field(default=_never_a_ping)
    # The vendor's own test-mode flag as it appears in the payload ("test: true"), or None
    # for a live order: such a payload is sent only with a test_event_code.
    test_mode: Callable[[Any], str | None] = field(default=_never_a_test)
    # Topic -> where that topic's payload carries the buyer's identifiers, shown when an
    # event of it is rejected for missing user data (capirelay mapping test, webhook answers).
    identifier_hints: Mapping[str, str] = field(default_factory=dict)

    def default_mapping(self) -> EventMapping | None:
        return _load_packaged(self.mapping_path) if self.mapping_path is not None else None


@cache
def _load_packaged(path: Path) -> EventMapping:
    return load_mapping(path)


def hmac_sha256(secret: str, message: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).digest()


def header(headers: Headers, name: str) -> str | None:
    value = headers.get(name)
    return value.strip() if value is not None and value.strip() else None


def verify_base64_hmac(body: bytes, headers: Headers, name: str, secret: str) -> None:
    """Shopify's and WooCommerce's scheme: base64(HMAC-SHA256(secret, raw body)) in ``name``."""
    given = header(headers, name)
    if given is None:
        raise SignatureError(f"missing {name} header; the request is not signed")
    expected = base64.b64encode(hmac_sha256(secret, body))
    if not hmac.compare_digest(expected, given.encode("ascii", "replace")):
        raise SignatureError(f"{name} does not match the body signed with the configured secret")


_MISSING_USER_DATA = frozenset({"missing_user_data", "insufficient_customer_info"})


def identifier_hint(
    preset: WebhookPreset, topic: str | None, problems: Sequence[Problem]
) -> Problem | None:
    """A problem saying where ``topic`` carries the buyer, when ``problems`` say none was found."""
    hint = preset.identifier_hints.get(topic or "")
    missing = any(
        p.code in _MISSING_USER_DATA or (p.code == "missing_field" and p.field == "user_data")
        for p in problems
    )
    if hint is None or not missing:
        return None
    return warning("identifier_hint", "user_data", f"{preset.name} {topic}: {hint}")


_TOO_OLD_FOR_A_WEBHOOK = (
    "; Meta refuses it, and a webhook cannot be sent sooner. If the order was paid (or the "
    "event happened) just now, the mapping dates it from an older field of the payload: map "
    "event_time to the time it happened, in a copy of the preset's mapping.toml named by "
    'mapping = "..." in the webhook\'s config. If the order itself is old (imported with '
    "its original date, resent from the vendor's dashboard, or retried after a long outage), "
    "it is past Meta's window and cannot be sent; it is answered 200 so the vendor stops "
    "retrying"
)


def webhook_advice(problems: Sequence[Problem]) -> list[Problem]:
    """``problems`` with the advice a webhook's operator can follow in place of the generic one.

    Validation's ``event_too_old`` says "drop the event or send it sooner", which a webhook
    cannot do: the vendor decides when it notifies.
    """
    return [
        replace(p, message=p.message.partition(";")[0] + _TOO_OLD_FOR_A_WEBHOOK)
        if p.code == "event_too_old"
        else p
        for p in problems
    ]
