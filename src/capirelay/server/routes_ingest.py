"""``POST /v1/events`` (server to server) and ``POST /v1/collect`` (browser beacon).

Both run each event through :func:`capirelay.ingest.prepare_event` (raw
identifiers are hashed there, before anything is stored or logged), hand the
survivors to the outbox in one call (its group commit makes them durable) and
answer 202 only after that commit.  A rejected event costs only itself.  When
storage fails nothing is acknowledged: 503 with ``Retry-After``.

The beacon itself (its body, consent and bot drops, the event built from it
and the request) is :mod:`capirelay.sources.beacon`; drops are counted in
``dropped{reason}``.  Every event, beacon or server-sent, then gets the
pixel's Limited Data Use fields before it is hashed (the place is read from
the raw ``user_data``).

The beacon is CORS-restricted per pixel (:mod:`capirelay.server.cors`).  The
durable commit and its counting are :mod:`capirelay.server._commit`, shared
with the webhook routes.

Abuse defences (``capirelay.server.beacon_guard``): a beacon is rate limited
per client address and per pixel as soon as its pixel is known, before
anything is stored; its name must be in the pixel's ``beacon_events`` when
that is set; a ``token`` (``capirelay.beacon_tokens``) must match the event,
and the pixel's ``require_verified`` names need one.  ``POST /v1/events`` is
held to its ingest key's quota.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import Response

from capirelay import browser_ids
from capirelay.config import PixelSettings, Settings
from capirelay.ingest import PreparedEvent, prepare_event, shown_event_id
from capirelay.limits import has_surrogate
from capirelay.meta_facts import MAX_EVENTS_PER_REQUEST
from capirelay.metrics import Metrics
from capirelay.outbox.base import EnqueueStatus, Outbox, StorageUnavailable, unverified_claim
from capirelay.server import beacon_guard, cors
from capirelay.server._commit import (
    commit_events,
    problems_json,
    storage_unavailable,
)
from capirelay.server._receipts import record_dropped, record_duplicates
from capirelay.server.auth import authenticate, authorize_pixel
from capirelay.server.fast_path import Answer, Incoming, error_answer, json_answer, raw_headers
from capirelay.server.http import ApiError, parse_json
from capirelay.sources import consent
from capirelay.sources._body import (
    BodyError,
    optional_string,
    reject_unknown_fields,
    required_string,
)
from capirelay.sources.beacon import (
    beacon_event,
    drop_reason,
    page_cookies,
    parse_beacon,
    use_session_click_id,
)

__all__ = ["post_collect", "post_events", "preflight_collect"]

TEST_EVENT_CODE_HEADER = b"x-test-event-code"

_EVENTS_FIELDS = frozenset({"pixel_id", "data", "test_event_code"})


# ---------------------------------------------------------------------------
# POST /v1/events


async def post_events(state: State, incoming: Incoming) -> Answer:
    settings: Settings = state.settings
    caller = authenticate(incoming.header(b"authorization"), settings)
    body = parse_json(await incoming.body(settings.max_body_bytes))
    pixel_id, events, body_code = _events_body(body)
    pixel = _pixel(settings, pixel_id)
    authorize_pixel(caller, pixel_id)
    beacon_guard.limit_ingest_key(state, caller.source, pixel_id, len(events))
    test_event_code = incoming.header(TEST_EVENT_CODE_HEADER) or body_code or pixel.test_event_code
    if consent.ldu_active(pixel.consent):
        events = [_with_ldu(raw, pixel) for raw in events]
    now = time.time()
    prepared = [
        prepare_event(
            raw,
            pixel_id=pixel_id,
            pixel=pixel,
            now=now,
            test_event_code=test_event_code,
            source=caller.source,
            max_future_skew=settings.max_future_skew,
        )
        for raw in events
    ]
    statuses = await commit_events(state, pixel_id, prepared, now=now, source=caller.source)
    results = [
        {
            "index": index,
            "event_id": item.event_id,
            "status": status,
            "problems": problems_json(item.problems),
        }
        for index, (item, status) in enumerate(zip(prepared, statuses, strict=True))
    ]
    # Echoed as sent, unless it cannot be (half a character: every event names it).
    shown = None if test_event_code and has_surrogate(test_event_code) else test_event_code
    return json_answer(202, {"results": results, "test_event_code": shown})


def _events_body(body: Any) -> tuple[str, list[Any], str | None]:
    try:
        pixel_id, events, test_event_code = _events_fields(body)
    except BodyError as exc:
        raise _unprocessable(str(exc)) from None
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise ApiError(
            413,
            "too_many_events",
            f"data holds {len(events)} events; the limit is {MAX_EVENTS_PER_REQUEST} per request "
            "(Meta's batch limit); split the batch",
        )
    return pixel_id, events, test_event_code


def _events_fields(body: Any) -> tuple[str, list[Any], str | None]:
    if not isinstance(body, dict):
        raise BodyError('the body must be a JSON object: {"pixel_id": ..., "data": [...]}')
    reject_unknown_fields(body, _EVENTS_FIELDS)
    pixel_id = required_string(body, "pixel_id")
    events = body.get("data")
    if not isinstance(events, list):
        raise BodyError("data must be an array of events in Conversions API shape")
    if not events:
        raise BodyError(f"data is empty; send between 1 and {MAX_EVENTS_PER_REQUEST} events")
    if len(events) <= MAX_EVENTS_PER_REQUEST:
        for index, event in enumerate(events):
            if not isinstance(event, dict):
                raise BodyError(f"data[{index}] must be a JSON object (one event)")
    return pixel_id, events, optional_string(body, "test_event_code")


def _with_ldu(raw: dict[str, Any], pixel: PixelSettings) -> dict[str, Any]:
    return consent.apply_ldu(raw, pixel.consent, default_country=pixel.default_country)


# ---------------------------------------------------------------------------
# POST /v1/collect


async def post_collect(state: State, incoming: Incoming) -> Answer:
    settings: Settings = state.settings
    origin = incoming.header(b"origin")
    beacon_origins: cors.BeaconOrigins = state.beacon_origins
    headers = cors.cors_headers(origin) if beacon_origins.allows(origin) else {}
    try:
        return await _collect(state, incoming, settings, origin, headers)
    except ApiError as exc:
        return error_answer(exc, headers if exc.status != 403 else None)


async def _collect(
    state: State,
    incoming: Incoming,
    settings: Settings,
    origin: str | None,
    headers: dict[str, str],
) -> Answer:
    body = parse_json(await incoming.body(settings.max_collect_body_bytes))
    try:
        beacon = parse_beacon(body)
    except BodyError as exc:
        raise _unprocessable(str(exc)) from None
    pixel = _pixel(settings, beacon.pixel_id)
    headers_text = incoming.text_headers()
    remote_addr = incoming.client_host()
    beacon_guard.limit_collect(
        state, settings, beacon.pixel_id, remote_addr=remote_addr, headers=headers_text
    )
    if origin is not None and not cors.origin_allowed(pixel, origin):
        raise ApiError(
            403,
            "origin_not_allowed",
            f"this page's origin may not send events to pixel {beacon.pixel_id}; "
            f"add it to pixels.{beacon.pixel_id}.allowed_origins",
        )
    metrics: Metrics = state.metrics
    beacon_guard.check_event_allowed(metrics, pixel, beacon.pixel_id, beacon.event_name)
    verification = beacon_guard.verify_beacon(
        metrics,
        pixel,
        pixel_id=beacon.pixel_id,
        event_name=beacon.event_name,
        event_id=beacon.event_id,
        custom_data=beacon.custom_data,
        token=beacon.token,
    )
    event_id = beacon.event_id or str(uuid.uuid4())
    gpc = consent.gpc_requested(headers_text)
    reason = drop_reason(beacon, pixel, gpc, incoming.header(b"user-agent"))
    if reason is not None:
        metrics.dropped.labels(beacon.pixel_id, reason).inc()
        # A dropped beacon skips prepare_event and its limits: an id that breaks them
        # (a NUL PostgreSQL refuses, 64,000 characters) is neither kept nor echoed.
        shown = shown_event_id(event_id)
        if shown:
            await record_dropped(
                state.outbox,
                pixel_id=beacon.pixel_id,
                event_name=beacon.event_name,
                event_id=shown,
                reason=reason,
                now=time.time(),
            )
        dropped: dict[str, Any] = {"event_id": shown, "status": "dropped", "fbp": None}
        return json_answer(202, {**dropped, "problems": [], "reason": reason}, raw_headers(headers))

    context = browser_ids.from_request(
        url=incoming.url(),
        headers=headers_text,
        cookies=page_cookies(incoming.cookies(), beacon.user_data),
        remote_addr=remote_addr,
        trusted_proxies=settings.trusted_proxies,
        page_url=beacon.page_url,
        page_referrer=beacon.referrer_url,
    )
    if beacon.fbclid:
        use_session_click_id(context, beacon.fbclid)
    now = time.time()
    event = consent.apply_ldu(
        beacon_event(beacon, event_id, context, now),
        pixel.consent,
        default_country=pixel.default_country,
        gpc=gpc,
    )
    prepared = prepare_event(
        event,
        pixel_id=beacon.pixel_id,
        pixel=pixel,
        now=now,
        test_event_code=pixel.test_event_code,
        source="collect",
        max_future_skew=settings.max_future_skew,
    )
    if verification == beacon_guard.VERIFIED or prepared.new_event is None:
        statuses = await commit_events(
            state, beacon.pixel_id, [prepared], now=now, source="collect"
        )
    else:
        statuses = await _commit_unverified(state, beacon.pixel_id, prepared, now=now)
    [status] = statuses
    if status == EnqueueStatus.QUEUED.value:
        label = metrics.event_label(beacon.event_name)
        metrics.beacon_verification.labels(beacon.pixel_id, label, verification).inc()
    answer_headers = raw_headers(headers)
    for cookie in context.cookies_to_set:
        answer_headers.append((b"set-cookie", cookie.header_value().encode("latin-1")))
    return json_answer(
        202,
        {
            # prepare_event's id: "" when the beacon's breaks a limit, never echoed.
            "event_id": prepared.event_id,
            "status": status,
            "fbp": context.fbp,
            "problems": problems_json(prepared.problems),
        },
        answer_headers,
    )


async def _commit_unverified(
    state: State, pixel_id: str, prepared: PreparedEvent, *, now: float
) -> list[str]:
    """Commit an unverified beacon event with its keys in the unverified namespace
    (:func:`capirelay.outbox.base.unverified_claim`): anyone can send one, so its claim
    must never make an authenticated event (ingest key, webhook, import, verified beacon)
    a duplicate.  It is still a duplicate of an authenticated claim already stored (read
    first, on this path only) and of an earlier unverified one (the enqueue's own claim).
    """
    event = prepared.new_event
    assert event is not None
    outbox: Outbox = state.outbox
    try:
        held = await outbox.holds_claim(event, now=now)
    except StorageUnavailable:
        raise storage_unavailable(state) from None
    if held:
        metrics: Metrics = state.metrics
        metrics.duplicates.labels(pixel_id, metrics.event_label(event.event_name)).inc()
        await record_duplicates(outbox, [event], [EnqueueStatus.DUPLICATE], now=now)
        return [str(EnqueueStatus.DUPLICATE)]
    claimed = PreparedEvent(unverified_claim(event), prepared.event_id, prepared.problems)
    return await commit_events(state, pixel_id, [claimed], now=now, source="collect")


async def preflight_collect(request: Request) -> Response:
    return cors.preflight(request.app.state.beacon_origins, request.headers.get("origin"))


# ---------------------------------------------------------------------------
# Shared


def _pixel(settings: Settings, pixel_id: str) -> PixelSettings:
    pixel = settings.pixels.get(pixel_id)
    if pixel is None:
        raise ApiError(
            404,
            "unknown_pixel",
            "pixel_id is not configured on this gateway; check the id or add it under "
            "[pixels.<id>] in the config",
        )
    return pixel


def _unprocessable(message: str) -> ApiError:
    return ApiError(422, "invalid_body", message)
