"""``POST /v1/events`` (server to server) and ``POST /v1/collect`` (browser beacon).

Both run each event through :func:`capirelay.ingest.prepare_event` (raw
identifiers are hashed there, before anything is stored or logged), hand the
survivors to the outbox in one call (its group commit makes them durable) and
answer 202 only after that commit.  A rejected event costs only itself.  When
storage fails nothing is acknowledged: 503 with ``Retry-After``.

Before a beacon is prepared, the pixel's consent policy decides whether it is
sent at all (``capirelay.sources.consent``: consent flag, ``Sec-GPC``) and
known crawlers are dropped when ``filter_bots``; both are counted in
``dropped{reason}``.  Every event, beacon or server-sent, then gets the
pixel's Limited Data Use fields before it is hashed (the place is read from
the raw ``user_data``).

The beacon is CORS-restricted per pixel (``allowed_origins``).  A preflight
cannot name the pixel (the body is not sent), so it is answered for any
origin some pixel allows; the POST itself is then checked against its own
pixel.  A request without ``Origin`` is not a cross-site browser request and
is served (CORS is a browser protection, not authentication).

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
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from crawlerdetect import CrawlerDetect
from starlette.requests import Request
from starlette.responses import Response

from capirelay import browser_ids
from capirelay.config import PixelSettings, Settings
from capirelay.ingest import PreparedEvent, prepare_event
from capirelay.metrics import Metrics
from capirelay.outbox.base import EnqueueStatus, NewEvent
from capirelay.problems import Problem
from capirelay.server import beacon_guard
from capirelay.server._commit import commit_prepared
from capirelay.server._receipts import record_dropped
from capirelay.server.auth import authenticate, authorize_pixel
from capirelay.server.http import ApiError, JSONResponse, parse_json, read_body
from capirelay.sources import consent

__all__ = ["MAX_EVENTS_PER_REQUEST", "post_collect", "post_events", "preflight_collect"]

MAX_EVENTS_PER_REQUEST = 1000
TEST_EVENT_CODE_HEADER = "x-test-event-code"

_EVENTS_FIELDS = frozenset({"pixel_id", "data", "test_event_code"})
_COLLECT_FIELDS = frozenset(
    {
        "pixel_id",
        "event_name",
        "event_id",
        "event_time",
        "custom_data",
        "user_data",
        "page_url",
        "referrer_url",
        "consent",
        "fbclid",
        "token",
    }
)
_CORS_METHODS = "POST, OPTIONS"
_CORS_MAX_AGE = "600"

_crawlers = CrawlerDetect()


# ---------------------------------------------------------------------------
# POST /v1/events


async def post_events(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    caller = authenticate(request.headers.get("authorization"), settings)
    body = parse_json(await read_body(request, settings.max_body_bytes))
    pixel_id, events, body_code = _events_body(body)
    pixel = _pixel(settings, pixel_id)
    authorize_pixel(caller, pixel_id)
    beacon_guard.limit_ingest_key(request, caller.source, pixel_id, len(events))
    test_event_code = (
        request.headers.get(TEST_EVENT_CODE_HEADER) or body_code or pixel.test_event_code
    )
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
    statuses = await _commit(request, pixel_id, prepared, now=now, source=caller.source)
    results = [
        {
            "index": index,
            "event_id": item.event_id,
            "status": status,
            "problems": _problems_json(item.problems),
        }
        for index, (item, status) in enumerate(zip(prepared, statuses, strict=True))
    ]
    return JSONResponse({"results": results, "test_event_code": test_event_code}, 202)


def _events_body(body: Any) -> tuple[str, list[Any], str | None]:
    if not isinstance(body, dict):
        raise _unprocessable('the body must be a JSON object: {"pixel_id": ..., "data": [...]}')
    _reject_unknown_fields(body, _EVENTS_FIELDS)
    pixel_id = _required_string(body, "pixel_id")
    events = body.get("data")
    if not isinstance(events, list):
        raise _unprocessable("data must be an array of events in Conversions API shape")
    if not events:
        raise _unprocessable("data is empty; send between 1 and 1000 events")
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise ApiError(
            413,
            "too_many_events",
            f"data holds {len(events)} events; the limit is {MAX_EVENTS_PER_REQUEST} per request "
            "(Meta's batch limit); split the batch",
        )
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise _unprocessable(f"data[{index}] must be a JSON object (one event)")
    return pixel_id, events, _optional_string(body, "test_event_code")


def _with_ldu(raw: dict[str, Any], pixel: PixelSettings) -> dict[str, Any]:
    return consent.apply_ldu(raw, pixel.consent, default_country=pixel.default_country)


# ---------------------------------------------------------------------------
# POST /v1/collect


@dataclass(frozen=True, slots=True)
class _Beacon:
    pixel_id: str
    event_name: str
    event_id: str | None
    event_time: int | None
    custom_data: dict[str, Any] | None
    user_data: dict[str, Any]
    page_url: str | None
    referrer_url: str | None
    consented: bool | None
    fbclid: str | None
    token: str | None


async def post_collect(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    origin = request.headers.get("origin")
    cors = _cors_headers(origin) if _origin_allowed_anywhere(settings, origin) else {}
    try:
        return await _collect(request, settings, origin, cors)
    except ApiError as exc:
        return exc.response(cors if exc.status != 403 else None)


async def _collect(
    request: Request, settings: Settings, origin: str | None, cors: dict[str, str]
) -> Response:
    beacon = _beacon_body(parse_json(await read_body(request, settings.max_collect_body_bytes)))
    pixel = _pixel(settings, beacon.pixel_id)
    beacon_guard.limit_collect(request, settings, beacon.pixel_id)
    if origin is not None and not _origin_allowed(pixel, origin):
        raise ApiError(
            403,
            "origin_not_allowed",
            f"this page's origin may not send events to pixel {beacon.pixel_id}; "
            f"add it to pixels.{beacon.pixel_id}.allowed_origins",
        )
    metrics: Metrics = request.app.state.metrics
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
    gpc = consent.gpc_requested(request.headers)
    reason = _drop_reason(beacon, pixel, gpc, request.headers.get("user-agent"))
    if reason is not None:
        metrics.dropped.labels(beacon.pixel_id, reason).inc()
        await record_dropped(
            request.app.state.outbox,
            pixel_id=beacon.pixel_id,
            event_name=beacon.event_name,
            event_id=event_id,
            reason=reason,
            now=time.time(),
        )
        dropped: dict[str, Any] = {"event_id": event_id, "status": "dropped", "fbp": None}
        return JSONResponse({**dropped, "problems": [], "reason": reason}, 202, headers=cors)

    context = browser_ids.from_request(
        url=str(request.url),
        headers=request.headers,
        cookies=_page_cookies(request.cookies, beacon.user_data),
        remote_addr=request.client.host if request.client else None,
        trusted_proxies=settings.trusted_proxies,
        page_url=beacon.page_url,
        page_referrer=beacon.referrer_url,
    )
    if beacon.fbclid:
        _use_session_click_id(context, beacon.fbclid)
    now = time.time()
    event = consent.apply_ldu(
        _beacon_event(beacon, event_id, context, now),
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
    [status] = await _commit(request, beacon.pixel_id, [prepared], now=now, source="collect")
    if status == EnqueueStatus.QUEUED.value:
        label = metrics.event_label(beacon.event_name)
        metrics.beacon_verification.labels(beacon.pixel_id, label, verification).inc()
    response = JSONResponse(
        {
            "event_id": prepared.event_id or event_id,
            "status": status,
            "fbp": context.fbp,
            "problems": _problems_json(prepared.problems),
        },
        202,
        headers=cors,
    )
    for cookie in context.cookies_to_set:
        response.headers.append("set-cookie", cookie.header_value())
    return response


def _page_cookies(cookies: Mapping[str, str], user_data: Mapping[str, Any]) -> dict[str, str]:
    """The request's cookies with the page's own valid ``fbp``/``fbc`` taking their place.

    The snippet sends the page's first-party ``_fbp``/``_fbc`` (the pixel's, or
    the ones it wrote on the page's domain) in ``user_data``.  On another site
    the gateway never sees those cookies, and a cookie of its own domain is a
    third-party one, so a valid value from the body wins; an invalid one is
    ignored (and then replaced, like a missing one).  ``from_request`` mints
    only when neither the body nor a cookie holds a valid value.
    """
    merged = dict(cookies)
    for key, cookie, parse in (
        ("fbp", browser_ids.FBP_COOKIE, browser_ids.parse_fbp),
        ("fbc", browser_ids.FBC_COOKIE, browser_ids.parse_fbc),
    ):
        value = user_data.get(key)
        if isinstance(value, str) and parse(value) is not None:
            merged[cookie] = value
    return merged


def _drop_reason(
    beacon: _Beacon, pixel: PixelSettings, gpc: bool, user_agent: str | None
) -> str | None:
    """Why this beacon is deliberately not sent: no consent, or a crawler inflating counts."""
    reason = consent.drop_reason(beacon.consented, gpc=gpc, policy=pixel.consent)
    if reason is not None:
        return reason
    if pixel.filter_bots and user_agent and _crawlers.isCrawler(user_agent):
        return "bot"
    return None


def _use_session_click_id(context: browser_ids.BrowserContext, fbclid: str) -> None:
    """Build ``fbc`` from the click id the snippet kept since the landing page.

    The page URL's own ``fbclid`` was already used by ``from_request``; this is
    for later pages of the visit.  A cookie for the same click is kept as is;
    a different (older) click is replaced, and the new ``_fbc`` cookie is
    written where the ``_fbp`` one is (same domain and flags), or not at all
    when this request cannot set first-party cookies.
    """
    page = urlsplit(context.event_source_url or "")
    if "fbclid" in parse_qs(page.query):
        return  # the click this page was opened by wins over an earlier one
    current = browser_ids.parse_fbc(context.fbc)
    if current is not None and current.payload == fbclid:
        return
    host = page.hostname or ""
    try:
        context.fbc = browser_ids.build_fbc(fbclid, host)
    except ValueError:
        return  # not a click id; the beacon's other fields still count
    template = next((c for c in context.cookies_to_set if c.name == browser_ids.FBP_COOKIE), None)
    context.cookies_to_set = [c for c in context.cookies_to_set if c.name != browser_ids.FBC_COOKIE]
    if template is not None:
        context.cookies_to_set.append(
            replace(template, name=browser_ids.FBC_COOKIE, value=context.fbc)
        )


def _beacon_body(body: Any) -> _Beacon:
    if not isinstance(body, dict):
        raise _unprocessable('the body must be a JSON object: {"pixel_id": ..., "event_name": ...}')
    _reject_unknown_fields(body, _COLLECT_FIELDS)
    return _Beacon(
        pixel_id=_required_string(body, "pixel_id"),
        event_name=_required_string(body, "event_name"),
        event_id=_optional_string(body, "event_id"),
        event_time=_optional_unix_seconds(body, "event_time"),
        custom_data=_optional_object(body, "custom_data"),
        user_data=_optional_object(body, "user_data") or {},
        page_url=_optional_string(body, "page_url"),
        referrer_url=_optional_string(body, "referrer_url"),
        consented=_consent_flag(body.get("consent")),
        fbclid=_optional_string(body, "fbclid"),
        token=_optional_string(body, "token"),
    )


def _optional_unix_seconds(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _unprocessable(f"{name} must be an integer (unix seconds); omit it to use now")
    return value


def _consent_flag(value: Any) -> bool | None:
    try:
        return consent.parse_consent_flag(value)
    except consent.ConsentFlagError as exc:
        raise _unprocessable(str(exc)) from None


def _beacon_event(
    beacon: _Beacon, event_id: str, context: browser_ids.BrowserContext, now: float
) -> dict[str, Any]:
    # What the request itself tells us (IP, UA, cookies) wins over what the page claims.
    user_data = {**beacon.user_data, **context.user_data()}
    event: dict[str, Any] = {
        "event_name": beacon.event_name,
        "event_time": beacon.event_time if beacon.event_time is not None else int(now),
        "event_id": event_id,
        "action_source": "website",
        "user_data": user_data,
    }
    if context.event_source_url:
        event["event_source_url"] = context.event_source_url
    if context.referrer_url:
        event["referrer_url"] = context.referrer_url
    if beacon.custom_data is not None:
        event["custom_data"] = beacon.custom_data
    return event


async def preflight_collect(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    origin = request.headers.get("origin")
    if not _origin_allowed_anywhere(settings, origin):
        return JSONResponse(
            {
                "error": {
                    "code": "origin_not_allowed",
                    "message": "this origin may not send beacons; "
                    "add it to allowed_origins of the pixel",
                }
            },
            403,
        )
    headers = _cors_headers(origin)
    headers["access-control-allow-methods"] = _CORS_METHODS
    requested = request.headers.get("access-control-request-headers")
    headers["access-control-allow-headers"] = requested or "content-type"
    headers["access-control-max-age"] = _CORS_MAX_AGE
    return Response(status_code=204, headers=headers)


def _normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def _origin_allowed(pixel: PixelSettings, origin: str) -> bool:
    wanted = _normalize_origin(origin)
    return any(
        allowed == "*" or _normalize_origin(allowed) == wanted for allowed in pixel.allowed_origins
    )


def _origin_allowed_anywhere(settings: Settings, origin: str | None) -> bool:
    if not origin:
        return False
    return any(_origin_allowed(pixel, origin) for pixel in settings.pixels.values())


def _cors_headers(origin: str | None) -> dict[str, str]:
    # Credentials are allowed so the _fbp/_fbc cookies flow, which rules out "*": echo the origin.
    return {
        "access-control-allow-origin": origin or "",
        "access-control-allow-credentials": "true",
        "vary": "Origin",
    }


# ---------------------------------------------------------------------------
# Shared


async def _commit(
    request: Request,
    pixel_id: str,
    prepared: Sequence[PreparedEvent],
    *,
    now: float,
    source: str,
) -> list[str]:
    """Enqueue the accepted events in one durable commit; one status per prepared event."""
    committed = await commit_prepared(request, pixel_id, prepared, now=now)
    metrics: Metrics = request.app.state.metrics
    _count(metrics, pixel_id, source, committed.accepted, committed.enqueued, prepared)
    return committed.statuses


def _count(
    metrics: Metrics,
    pixel_id: str,
    source: str,
    accepted: Sequence[NewEvent],
    enqueued: Sequence[EnqueueStatus],
    prepared: Sequence[PreparedEvent],
) -> None:
    """Aggregate first: one ``labels().inc(n)`` per label set, not one per event."""
    queued: Counter[str] = Counter()
    duplicate: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for event, status in zip(accepted, enqueued, strict=True):
        if status is EnqueueStatus.REJECTED:
            rejected["unstorable_value"] += 1
            continue
        (queued if status is EnqueueStatus.QUEUED else duplicate)[event.event_name] += 1
    for item in prepared:
        if item.new_event is None:
            rejected.update({problem.code for problem in item.problems if problem.is_error})
    for event_name, n in queued.items():
        metrics.accepted.labels(pixel_id, metrics.event_label(event_name), source).inc(n)
    for event_name, n in duplicate.items():
        metrics.duplicates.labels(pixel_id, metrics.event_label(event_name)).inc(n)
    for code, n in rejected.items():
        metrics.rejected.labels(pixel_id, code).inc(n)


def _problems_json(problems: Sequence[Problem]) -> list[dict[str, str]]:
    # Built by hand: dataclasses.asdict (Problem.to_dict) deep-copies and costs ~5x more,
    # which shows at 1,000 results per response.
    return [
        {"code": p.code, "field": p.field, "severity": p.severity.value, "message": p.message}
        for p in problems
    ]


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


def _reject_unknown_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(key for key in body if key not in allowed)
    if unknown:
        names = ", ".join(repr(key[:64]) for key in unknown[:5])
        raise _unprocessable(f"unknown field(s) {names}; allowed: {', '.join(sorted(allowed))}")


def _required_string(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise _unprocessable(f"{name} is required and must be a non-empty string")
    return value


def _optional_string(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _unprocessable(f"{name} must be a string when given")
    return value or None


def _optional_object(body: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _unprocessable(f"{name} must be a JSON object when given")
    return value
