"""The browser beacon as a source: its body, its consent and bot drops, its event.

``POST /v1/collect`` (:mod:`capirelay.server.routes_ingest`) reads the body with
:func:`parse_beacon`, asks :func:`drop_reason` whether the event is sent at all
(the pixel's consent policy, ``Sec-GPC``, known crawlers when ``filter_bots``),
and builds the Conversions API event with :func:`beacon_event` from the body and
what the request itself says (:mod:`capirelay.browser_ids`: IP, user agent,
``_fbp``/``_fbc``).  Nothing here knows HTTP: body errors are
:class:`~capirelay.sources._body.BodyError`, the route answers them with 422.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from crawlerdetect import CrawlerDetect

from capirelay import browser_ids
from capirelay.sources import consent
from capirelay.sources._body import (
    BodyError,
    optional_object,
    optional_string,
    optional_unix_seconds,
    reject_unknown_fields,
    required_string,
)

if TYPE_CHECKING:
    from capirelay.config import PixelSettings

__all__ = [
    "BEACON_FIELDS",
    "Beacon",
    "beacon_event",
    "drop_reason",
    "page_cookies",
    "parse_beacon",
    "use_session_click_id",
]

BEACON_FIELDS = frozenset(
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

_crawlers = CrawlerDetect()


@dataclass(frozen=True, slots=True)
class Beacon:
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


def parse_beacon(body: Any) -> Beacon:
    """The beacon's fields; :class:`BodyError` names the first one that is wrong."""
    if not isinstance(body, dict):
        raise BodyError('the body must be a JSON object: {"pixel_id": ..., "event_name": ...}')
    reject_unknown_fields(body, BEACON_FIELDS)
    return Beacon(
        pixel_id=required_string(body, "pixel_id"),
        event_name=required_string(body, "event_name"),
        event_id=optional_string(body, "event_id"),
        event_time=optional_unix_seconds(body, "event_time"),
        custom_data=optional_object(body, "custom_data"),
        user_data=optional_object(body, "user_data") or {},
        page_url=optional_string(body, "page_url"),
        referrer_url=optional_string(body, "referrer_url"),
        consented=_consent_flag(body.get("consent")),
        fbclid=optional_string(body, "fbclid"),
        token=optional_string(body, "token"),
    )


def _consent_flag(value: Any) -> bool | None:
    try:
        return consent.parse_consent_flag(value)
    except consent.ConsentFlagError as exc:
        raise BodyError(str(exc)) from None


def page_cookies(cookies: Mapping[str, str], user_data: Mapping[str, Any]) -> dict[str, str]:
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


def drop_reason(
    beacon: Beacon, pixel: PixelSettings, gpc: bool, user_agent: str | None
) -> str | None:
    """Why this beacon is deliberately not sent: no consent, or a crawler inflating counts."""
    reason = consent.drop_reason(beacon.consented, gpc=gpc, policy=pixel.consent)
    if reason is not None:
        return reason
    if pixel.filter_bots and user_agent and _crawlers.isCrawler(user_agent):
        return "bot"
    return None


def use_session_click_id(context: browser_ids.BrowserContext, fbclid: str) -> None:
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


def beacon_event(
    beacon: Beacon, event_id: str, context: browser_ids.BrowserContext, now: float
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
