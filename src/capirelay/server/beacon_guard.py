"""What the public routes check before they spend anything on a request.

* :func:`limit_collect` / :func:`limit_webhook`: the token buckets of
  :mod:`capirelay.server.rate_limit`, per client address and per pixel or
  webhook (a webhook's own bucket only once its signature is valid); a
  refusal is a 429 with ``Retry-After``, counted as
  ``capirelay_events_dropped_total{reason="rate_limited"}``, nothing stored.
* :func:`check_event_allowed`: the pixel's ``beacon_events`` allowlist.
* :func:`verify_beacon`: the server-signed token of
  :mod:`capirelay.beacon_tokens`; ``require_verified`` names the events that
  need one.  Every queued beacon is counted by its verification result in
  ``capirelay_beacon_verification_total``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from starlette.datastructures import State
from starlette.requests import Request

from capirelay.beacon_tokens import TokenError, verify_beacon_token
from capirelay.config import PixelSettings, Settings
from capirelay.metrics import Metrics
from capirelay.server.http import ApiError
from capirelay.server.rate_limit import GatewayLimits, address_key

__all__ = [
    "UNVERIFIED",
    "VERIFIED",
    "check_event_allowed",
    "limit_collect",
    "limit_webhook",
    "verify_beacon",
]

VERIFIED = "verified"
UNVERIFIED = "unverified"
RATE_LIMITED = "rate_limited"


def _address(request: Request, settings: Settings) -> str:
    remote = request.client.host if request.client else None
    return address_key(remote, request.headers, settings.trusted_proxies)


def limit_collect(
    state: State,
    settings: Settings,
    pixel_id: str,
    *,
    remote_addr: str | None,
    headers: Mapping[str, str],
) -> None:
    """429 when this beacon's address or pixel is over its limit (counted, nothing stored)."""
    limits: GatewayLimits = state.limits
    address = address_key(remote_addr, headers, settings.trusted_proxies)
    try:
        limits.check_collect(address, pixel_id)
    except ApiError:
        state.metrics.dropped.labels(pixel_id, RATE_LIMITED).inc()
        raise


def limit_webhook(
    request: Request, settings: Settings, name: str, pixel_id: str, *, signed: bool
) -> None:
    """429 when the sender's address (``signed=False``: before the signature is checked,
    which costs CPU) or the webhook (``signed=True``: only once the signature is valid, so
    forged requests cannot spend the vendor's quota) is over its limit."""
    limits: GatewayLimits = request.app.state.limits
    try:
        if signed:
            limits.check_webhook_name(name)
        else:
            limits.check_webhook_address(_address(request, settings))
    except ApiError:
        metrics: Metrics = request.app.state.metrics
        metrics.dropped.labels(pixel_id, RATE_LIMITED).inc()
        metrics.webhooks.labels(name, RATE_LIMITED).inc()
        raise


def limit_ingest_key(state: State, key_name: str, pixel_id: str, events: int) -> None:
    """429 when ingest key ``key_name`` is over its quota (its events counted as dropped)."""
    limits: GatewayLimits = state.limits
    try:
        limits.check_ingest_key(key_name, events)
    except ApiError:
        state.metrics.dropped.labels(pixel_id, RATE_LIMITED).inc(events)
        raise


def check_event_allowed(
    metrics: Metrics, pixel: PixelSettings, pixel_id: str, event_name: str
) -> None:
    """422 when ``beacon_events`` is set and does not name ``event_name``."""
    if pixel.beacon_events is None or event_name in pixel.beacon_events:
        return
    metrics.rejected.labels(pixel_id, "event_not_allowed").inc()
    shown = event_name[:64]
    raise ApiError(
        422,
        "event_not_allowed",
        f"event_name {shown!r} is not accepted from browsers for pixel {pixel_id}: add it to "
        f"pixels.{pixel_id}.beacon_events, or send it from your server (POST /v1/events)",
    )


def verify_beacon(
    metrics: Metrics,
    pixel: PixelSettings,
    *,
    pixel_id: str,
    event_name: str,
    event_id: str | None,
    custom_data: Mapping[str, Any] | None,
    token: str | None,
) -> str:
    """``verified`` or ``unverified``, or ApiError 403/422 when the event must be refused."""
    if token is None:
        if event_name in pixel.require_verified:
            _refuse(
                metrics,
                pixel_id,
                "verification_required",
                f"{event_name} events for pixel {pixel_id} need a token from your server "
                "(pixels.<id>.require_verified): pass capirelay.track(name, params, user, "
                "{eventId, token}) with a token minted by mint_beacon_token",
            )
        return UNVERIFIED
    secret = pixel.verification_secret.resolve() if pixel.verification_secret else None
    if secret is None:
        _refuse(
            metrics,
            pixel_id,
            "verification_unavailable",
            f"this beacon carries a token but pixels.{pixel_id}.verification_secret is not "
            "configured (or its variable/file is empty) on the gateway",
            status=422,
        )
    if not event_id:
        _refuse(
            metrics,
            pixel_id,
            "token_without_event_id",
            "a token is bound to an event_id: send the event_id your server signed "
            "(capirelay.track(..., {eventId, token}))",
            status=422,
        )
    data = custom_data or {}
    try:
        verify_beacon_token(
            token,
            secret,
            pixel_id=pixel_id,
            event_name=event_name,
            event_id=event_id,
            value=data.get("value"),
            currency=data.get("currency") if isinstance(data.get("currency"), str) else None,
        )
    except TokenError as exc:
        _refuse(metrics, pixel_id, exc.code, exc.message)
    return VERIFIED


def _refuse(
    metrics: Metrics, pixel_id: str, code: str, message: str, status: int = 403
) -> NoReturn:
    metrics.rejected.labels(pixel_id, code).inc()
    raise ApiError(status, code, message)
