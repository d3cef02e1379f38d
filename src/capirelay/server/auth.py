"""Ingest-key authentication for ``POST /v1/events``.

Keys are compared in constant time against *every* configured key, with no
early exit, so response timing reveals neither whether a key exists nor which
source it belongs to.  Both sides are hashed first so ``hmac.compare_digest``
always compares equal-length strings (it leaks length otherwise).  Secrets are
resolved on each request, so a rotated key in the environment or a key file
takes effect without a restart; only the configured secret's digest is remembered
(by its value: a rotated secret gets its own), never anything about the presented
key.  Nothing here logs or echoes the presented key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass

from capirelay.config import Settings
from capirelay.server.http import ApiError

__all__ = ["Caller", "authenticate", "authorize_pixel"]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="capirelay"'}


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated source: the key's name in ``ingest_keys`` and its pixel allow-list."""

    source: str
    pixels: frozenset[str]  # empty: every configured pixel

    def may_send_to(self, pixel_id: str) -> bool:
        return not self.pixels or pixel_id in self.pixels


def authenticate(authorization: str | None, settings: Settings) -> Caller:
    """The caller behind an ``Authorization: Bearer <key>`` header, or ApiError 401."""
    presented = _bearer_token(authorization)
    presented_digest = hashlib.sha256(presented.encode()).digest()
    matched: Caller | None = None
    for name, ingest_key in settings.ingest_keys.items():
        secret = ingest_key.key.resolve()
        if secret is None:
            continue
        secret_digest = _secret_digest(secret)
        if hmac.compare_digest(presented_digest, secret_digest) and matched is None:
            matched = Caller(source=name, pixels=frozenset(ingest_key.pixels))
    if matched is None:
        raise ApiError(
            401,
            "invalid_key",
            "the ingest key is not valid; send 'Authorization: Bearer <key>' with a key "
            "from ingest_keys in the gateway config",
            headers=_CHALLENGE,
        )
    return matched


@functools.lru_cache(maxsize=64)
def _secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def authorize_pixel(caller: Caller, pixel_id: str) -> None:
    if not caller.may_send_to(pixel_id):
        raise ApiError(
            403,
            "pixel_not_allowed",
            f"ingest key '{caller.source}' may not send to pixel {pixel_id}; add the pixel to "
            f"ingest_keys.{caller.source}.pixels or use that pixel's key",
        )


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise ApiError(
            401,
            "missing_key",
            "this endpoint needs an ingest key: send 'Authorization: Bearer <key>'",
            headers=_CHALLENGE,
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "missing_key",
            "the Authorization header must be 'Bearer <key>'",
            headers=_CHALLENGE,
        )
    return token


def authorize_metrics_scrape(authorization: str | None, settings: Settings) -> None:
    """``/metrics`` is open unless ``metrics_token`` is set; then it needs that bearer token."""
    if settings.metrics_token is None:
        return
    expected = settings.metrics_token.resolve()
    scheme, _, presented = (authorization or "").partition(" ")
    ok = (
        expected is not None
        and hmac.compare_digest(
            hashlib.sha256(presented.strip().encode()).digest(),
            hashlib.sha256(expected.encode()).digest(),
        )
        and scheme.lower() == "bearer"
    )
    if not ok:
        raise ApiError(
            401,
            "invalid_metrics_token",
            "this gateway protects /metrics: scrape it with 'Authorization: Bearer <token>' "
            "using metrics_token from the gateway config",
            headers=_CHALLENGE,
        )
