"""The beacon as a source (sources.beacon) and its CORS (server.cors), without HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from capirelay import browser_ids
from capirelay.config import PixelSettings, Settings
from capirelay.server import cors
from capirelay.sources._body import BodyError
from capirelay.sources.beacon import beacon_event, drop_reason, page_cookies, parse_beacon

BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"
FBP = "fb.1.1700000000000.1234567890"


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ([], "JSON object"),
        ({"pixel_id": "1"}, "event_name is required"),
        ({"pixel_id": "1", "event_name": "Lead", "extra": 1}, "unknown field(s) 'extra'"),
        ({"pixel_id": "1", "event_name": "Lead", "event_time": "now"}, "event_time must be"),
        ({"pixel_id": "1", "event_name": "Lead", "user_data": []}, "user_data must be a JSON"),
        ({"pixel_id": "1", "event_name": "Lead", "consent": "maybe"}, "consent"),
    ],
)
def test_a_bad_body_names_the_field(body: Any, names: str) -> None:
    with pytest.raises(BodyError, match=names.replace("(", r"\(").replace(")", r"\)")):
        parse_beacon(body)


def test_a_beacon_becomes_a_website_event_with_the_requests_own_ids() -> None:
    beacon = parse_beacon(
        {
            "pixel_id": "1",
            "event_name": "Lead",
            "event_time": 1_700_000_000.0,
            "user_data": {"em": "a@example.com", "client_ip_address": "198.51.100.1"},
            "custom_data": {"value": 3},
        }
    )
    context = browser_ids.BrowserContext(
        fbc=None,
        fbp=FBP,
        client_ip_address="203.0.113.5",
        client_user_agent=BROWSER_UA,
        event_source_url="https://shop.example/thanks",
        referrer_url=None,
    )
    event = beacon_event(beacon, "e-1", context, now=1_800_000_000)
    assert event["event_time"] == 1_700_000_000
    assert event["action_source"] == "website"
    assert event["event_id"] == "e-1"
    # What the request says wins over what the page claims.
    assert event["user_data"]["client_ip_address"] == "203.0.113.5"
    assert event["user_data"]["em"] == "a@example.com"
    assert event["custom_data"] == {"value": 3}
    assert event["event_source_url"] == "https://shop.example/thanks"
    assert "referrer_url" not in event


def test_crawlers_are_dropped_only_when_the_pixel_filters_bots() -> None:
    beacon = parse_beacon({"pixel_id": "1", "event_name": "PageView"})
    assert drop_reason(beacon, PixelSettings(), False, BOT_UA) == "bot"
    assert drop_reason(beacon, PixelSettings(), False, BROWSER_UA) is None
    assert drop_reason(beacon, PixelSettings(filter_bots=False), False, BOT_UA) is None
    refused = parse_beacon({"pixel_id": "1", "event_name": "PageView", "consent": False})
    assert drop_reason(refused, PixelSettings(), False, BROWSER_UA) == "no_consent"


def test_a_valid_page_fbp_replaces_the_cookie_and_an_invalid_one_is_ignored() -> None:
    cookies = {browser_ids.FBP_COOKIE: "fb.1.1600000000000.42"}
    assert page_cookies(cookies, {"fbp": FBP})[browser_ids.FBP_COOKIE] == FBP
    assert page_cookies(cookies, {"fbp": "junk"}) == cookies


def test_cors_allows_a_pixels_origin_and_answers_the_preflight() -> None:
    settings = Settings(pixels={"1": PixelSettings(allowed_origins=["https://Shop.example/"])})
    origins = cors.BeaconOrigins.from_settings(settings)
    assert cors.origin_allowed(settings.pixels["1"], "https://shop.example")
    assert not origins.allows("https://evil.example")
    assert not origins.allows(None)
    allowed = cors.preflight(origins, "https://shop.example")
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert allowed.headers["access-control-allow-headers"] == "content-type"
    assert cors.preflight(origins, "https://evil.example").status_code == 403


def test_the_origins_of_every_pixel_are_one_set_answering_as_each_pixel_would() -> None:
    pixels = {
        str(1000 + i): PixelSettings(
            allowed_origins=[f"https://Shop{i}.example/", f" https://www.shop{i}.example "]
        )
        for i in range(100)
    }
    pixels["9999"] = PixelSettings()  # a pixel without a beacon
    settings = Settings(pixels=pixels)
    origins = cors.BeaconOrigins.from_settings(settings)
    tried = [
        "https://shop0.example",
        "https://SHOP99.example/",
        "https://www.shop57.example",
        "https://shop100.example",
        "http://shop1.example",
        "https://evil.example",
        "",
        None,
    ]
    for origin in tried:
        each = bool(origin) and any(
            cors.origin_allowed(pixel, origin or "") for pixel in pixels.values()
        )
        assert origins.allows(origin) == each
        status = cors.preflight(origins, origin).status_code
        assert status == (204 if each else 403)
    # One pixel open to any origin opens the preflight to every origin.
    pixels["7"] = PixelSettings(allowed_origins=["*"])
    assert cors.BeaconOrigins.from_settings(Settings(pixels=pixels)).allows("https://any.example")
