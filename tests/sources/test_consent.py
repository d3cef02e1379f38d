"""Consent, Global Privacy Control, Limited Data Use and bot filtering.

The rules are tables (``parse_consent_flag``, ``drop_reason``, ``apply_ldu``);
the gateway tests then show each rule where it matters: what reaches the
emulator standing in for Meta, what is dropped, and what the metrics count.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from capirelay.config import ConsentPolicy, PixelSettings, Secret, Settings
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.normalize import sha256_hex
from capirelay.server import create_app
from capirelay.sources.consent import (
    ConsentFlagError,
    apply_ldu,
    drop_reason,
    gpc_requested,
    ldu_active,
    ldu_codes,
    parse_consent_flag,
)
from server.conftest import INGEST_KEY, gateway_settings, serve_in_thread
from waiting import wait_for

# ---------------------------------------------------------------------------
# The consent flag a page sends


@pytest.mark.parametrize(
    ("flag", "consented"),
    [
        (None, None),
        (True, True),
        (False, False),
        ({"ad_storage": "granted", "ad_user_data": "granted"}, True),
        ({"ad_storage": "granted"}, True),
        ({"ad_storage": "denied"}, False),
        ({"ad_storage": "granted", "ad_user_data": "denied"}, False),
        ({}, True),
    ],
)
def test_parse_consent_flag(flag: Any, consented: bool | None) -> None:
    assert parse_consent_flag(flag) is consented


@pytest.mark.parametrize(
    "flag", ["yes", 1, 0, [], {"analytics_storage": "granted"}, {"ad_storage": True}]
)
def test_parse_consent_flag_refuses_other_shapes(flag: Any) -> None:
    with pytest.raises(ConsentFlagError, match="consent must be"):
        parse_consent_flag(flag)


# ---------------------------------------------------------------------------
# Send or drop


OPEN = ConsentPolicy()
STRICT = ConsentPolicy(require_consent=True)
STRICT_NO_GPC = ConsentPolicy(require_consent=True, honor_gpc=False)


@pytest.mark.parametrize(
    ("policy", "consented", "gpc", "reason"),
    [
        (OPEN, None, False, None),
        (OPEN, True, False, None),
        (OPEN, False, False, "no_consent"),
        (OPEN, None, True, None),  # GPC alone means LDU, not a drop
        (STRICT, None, False, "no_consent"),
        (STRICT, True, False, None),
        (STRICT, False, False, "no_consent"),
        (STRICT, True, True, "no_consent"),  # GPC is a refusal where consent is required
        (STRICT_NO_GPC, True, True, None),
        (STRICT_NO_GPC, None, True, "no_consent"),
    ],
)
def test_drop_reason(
    policy: ConsentPolicy, consented: bool | None, gpc: bool, reason: str | None
) -> None:
    assert drop_reason(consented, gpc=gpc, policy=policy) == reason


@pytest.mark.parametrize(
    ("headers", "gpc"),
    [({"sec-gpc": "1"}, True), ({"sec-gpc": " 1 "}, True), ({"sec-gpc": "0"}, False), ({}, False)],
)
def test_gpc_requested(headers: dict[str, str], gpc: bool) -> None:
    assert gpc_requested(headers) is gpc


# ---------------------------------------------------------------------------
# Limited Data Use


@pytest.mark.parametrize(
    ("country", "state", "codes"),
    [
        ("us", "ca", (1, 1000)),
        ("us", "tx", (1, 0)),
        ("us", None, (1, 0)),
        (None, "ca", (1, 1000)),
        (None, None, (0, 0)),
        (None, "tx", (0, 0)),
        ("de", None, (0, 0)),
        ("de", "ca", (0, 0)),
    ],
)
def test_ldu_codes(country: str | None, state: str | None, codes: tuple[int, int]) -> None:
    assert ldu_codes(country, state) == codes


def ldu(country: int, state: int) -> dict[str, Any]:
    return {
        "data_processing_options": ["LDU"],
        "data_processing_options_country": country,
        "data_processing_options_state": state,
    }


NO_LDU: dict[str, Any] = {}
CALIFORNIA = {"state": "California", "country": "US"}

LDU_CASES = [
    # (policy, user_data, default_country, gpc, expected LDU fields)
    pytest.param(OPEN, CALIFORNIA, None, False, NO_LDU, id="no-policy"),
    pytest.param(ConsentPolicy(ldu_all=True), {}, None, False, ldu(0, 0), id="all-unknown"),
    pytest.param(ConsentPolicy(ldu_all=True), CALIFORNIA, None, False, ldu(1, 1000), id="all-ca"),
    pytest.param(
        ConsentPolicy(ldu_states=["ca"]), CALIFORNIA, None, False, ldu(1, 1000), id="state-named"
    ),
    pytest.param(
        ConsentPolicy(ldu_states=["California"]),
        {"st": "CA"},
        "US",
        False,
        ldu(1, 1000),
        id="state-spellings-agree",
    ),
    pytest.param(
        ConsentPolicy(ldu_states=["ca"]),
        {"state": "TX", "country": "us"},
        None,
        False,
        NO_LDU,
        id="other-state",
    ),
    pytest.param(
        ConsentPolicy(ldu_states=["ca"]), {}, "US", False, ldu(1, 0), id="us-state-unknown"
    ),
    pytest.param(ConsentPolicy(ldu_states=["ca"]), {}, None, False, ldu(0, 0), id="place-unknown"),
    pytest.param(
        ConsentPolicy(ldu_states=["ca"]), {"country": "DE"}, None, False, NO_LDU, id="abroad"
    ),
    pytest.param(
        ConsentPolicy(ldu_countries=["US"]), {"country": "us"}, None, False, ldu(1, 0), id="country"
    ),
    pytest.param(
        ConsentPolicy(ldu_countries=["us"]),
        {"country": "United States", "st": "ca"},
        None,
        False,
        ldu(1, 1000),
        id="country-by-name",
    ),
    pytest.param(
        ConsentPolicy(ldu_countries=["us"]),
        {"country": "a" * 64},
        "DE",
        False,
        ldu(0, 0),
        id="hashed-unknown-country-is-an-unknown-place",
    ),
    pytest.param(
        ConsentPolicy(ldu_countries=["US"]),
        {"country": sha256_hex("us"), "st": sha256_hex("ca")},
        "DE",
        False,
        ldu(1, 1000),
        id="hashed-us-california",
    ),
    pytest.param(
        ConsentPolicy(ldu_countries=["US"]),
        {"country": [sha256_hex("us").upper() + ".AQQCAQMC"], "st": sha256_hex("tx")},
        "DE",
        False,
        ldu(1, 0),
        id="hashed-country-any-case-with-appendix",
    ),
    pytest.param(
        ConsentPolicy(ldu_countries=["US"]),
        {"country": sha256_hex("de"), "st": sha256_hex("by")},
        "US",
        False,
        NO_LDU,
        id="hashed-abroad-beats-default",
    ),
    pytest.param(
        ConsentPolicy(ldu_states=["Colorado"]),
        {"country": sha256_hex("us"), "st": sha256_hex("co")},
        None,
        False,
        ldu(1, 0),
        id="hashed-listed-state",
    ),
    pytest.param(
        ConsentPolicy(ldu_states=["ca"]),
        {"country": sha256_hex("us"), "st": sha256_hex("tx")},
        None,
        False,
        NO_LDU,
        id="hashed-other-state",
    ),
    pytest.param(
        ConsentPolicy(ldu_states=["ca"]),
        {"country": sha256_hex("us"), "st": "b" * 64},
        None,
        False,
        ldu(1, 0),
        id="hashed-unknown-us-state",
    ),
    pytest.param(
        ConsentPolicy(ldu_states=["ca"]),
        {"st": sha256_hex("ca")},
        None,
        False,
        ldu(1, 1000),
        id="hashed-state-alone",
    ),
    pytest.param(OPEN, CALIFORNIA, None, True, ldu(1, 1000), id="gpc"),
    pytest.param(OPEN, {}, None, True, ldu(0, 0), id="gpc-place-unknown"),
    pytest.param(
        ConsentPolicy(honor_gpc=False), CALIFORNIA, None, True, NO_LDU, id="gpc-not-honoured"
    ),
]


@pytest.mark.parametrize(("policy", "user_data", "default", "gpc", "expected"), LDU_CASES)
def test_apply_ldu(
    policy: ConsentPolicy,
    user_data: dict[str, Any],
    default: str | None,
    gpc: bool,
    expected: dict[str, Any],
) -> None:
    event = {"event_name": "Purchase", "user_data": user_data}
    result = apply_ldu(event, policy, default_country=default, gpc=gpc)
    assert {k: v for k, v in result.items() if k.startswith("data_processing")} == expected
    assert event == {"event_name": "Purchase", "user_data": user_data}  # input untouched


def test_apply_ldu_keeps_the_callers_own_ldu_codes() -> None:
    event = {"user_data": CALIFORNIA, **ldu(0, 0)}
    assert apply_ldu(event, ConsentPolicy(ldu_all=True), default_country=None) is event


def test_apply_ldu_overrides_a_callers_empty_list() -> None:
    event = {"user_data": CALIFORNIA, "data_processing_options": []}
    result = apply_ldu(event, ConsentPolicy(ldu_states=["ca"]), default_country=None)
    assert result["data_processing_options"] == ["LDU"]


@pytest.mark.parametrize(
    ("policy", "active"),
    [
        (OPEN, False),
        (STRICT, False),
        (ConsentPolicy(ldu_all=True), True),
        (ConsentPolicy(ldu_countries=["us"]), True),
        (ConsentPolicy(ldu_states=["ca"]), True),
    ],
)
def test_ldu_active(policy: ConsentPolicy, active: bool) -> None:
    assert ldu_active(policy) is active


# ---------------------------------------------------------------------------
# Through the gateway

OPEN_PIXEL = "1111111111"
STRICT_PIXEL = "2222222222"
LDU_PIXEL = "3333333333"
BOTS_ALLOWED_PIXEL = "4444444444"
TOKEN = "consent-test-access-token"
TOKEN_ENV = "CAPIRELAY_TEST_CONSENT_TOKEN"
INGEST_KEY_ENV = "CAPIRELAY_TEST_INGEST_KEY"
ORIGIN = "https://shop.example"
PERSON_UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
PUBLIC_IP = "8.8.4.4"


def pixel(**extra: Any) -> PixelSettings:
    return PixelSettings(
        access_token=Secret(env=TOKEN_ENV), allowed_origins=[ORIGIN], default_country="US", **extra
    )


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    pixels = dict.fromkeys((OPEN_PIXEL, STRICT_PIXEL, LDU_PIXEL, BOTS_ALLOWED_PIXEL), TOKEN)
    with run_emulator(pixels=pixels) as em:
        yield em


@pytest.fixture(scope="module")
def settings(storage_url: str, emulator: RunningEmulator) -> Iterator[Settings]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, TOKEN)
        patch.setenv(INGEST_KEY_ENV, INGEST_KEY)
        patch.delenv("CAPIRELAY_CONFIG", raising=False)
        pixels = {
            OPEN_PIXEL: pixel(),
            STRICT_PIXEL: pixel(consent=ConsentPolicy(require_consent=True)),
            LDU_PIXEL: pixel(consent=ConsentPolicy(ldu_states=["CA"])),
            BOTS_ALLOWED_PIXEL: pixel(filter_bots=False),
        }
        yield gateway_settings(storage_url, emulator.url, pixels=pixels)


@pytest.fixture(scope="module")
def gateway(settings: Settings) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        yield http


def beacon(
    gateway: httpx.Client, pixel_id: str, *, user_agent: str = PERSON_UA, **fields: Any
) -> httpx.Response:
    headers = {
        "Origin": ORIGIN,
        "Host": "track.shop.example",
        "User-Agent": user_agent,
        "X-Forwarded-For": PUBLIC_IP,
        **fields.pop("headers", {}),
    }
    body = {
        "pixel_id": pixel_id,
        "event_name": "ViewContent",
        "event_id": f"c-{uuid.uuid4()}",
        "page_url": "https://shop.example/checkout",
        **fields,
    }
    response = gateway.post("/v1/collect", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response


def delivered(emulator: RunningEmulator, pixel_id: str, event_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for stored in emulator.state.events(pixel_id):
            if stored["event"].get("event_id") == event_id:
                return dict(stored["event"])
        return None

    found: dict[str, Any] = wait_for(find)
    return found


def dropped_count(gateway: httpx.Client, pixel_id: str, reason: str) -> float:
    text = gateway.get("/metrics").text
    pattern = (
        r'capirelay_events_dropped_total\{pixel="'
        + pixel_id
        + r'",reason="'
        + reason
        + r'"\} (\S+)'
    )
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize(
    ("pixel_id", "fields", "status"),
    [
        (OPEN_PIXEL, {}, "queued"),
        (OPEN_PIXEL, {"consent": False}, "dropped"),
        (OPEN_PIXEL, {"consent": {"ad_user_data": "denied"}}, "dropped"),
        (STRICT_PIXEL, {}, "dropped"),
        (STRICT_PIXEL, {"consent": True}, "queued"),
        (STRICT_PIXEL, {"consent": {"ad_storage": "granted", "ad_user_data": "granted"}}, "queued"),
        (STRICT_PIXEL, {"consent": True, "headers": {"Sec-GPC": "1"}}, "dropped"),
    ],
)
def test_beacon_consent_gate(
    gateway: httpx.Client, pixel_id: str, fields: dict[str, Any], status: str
) -> None:
    before = dropped_count(gateway, pixel_id, "no_consent")
    answer = beacon(gateway, pixel_id, **fields)
    assert answer.json()["status"] == status, answer.text
    counted = dropped_count(gateway, pixel_id, "no_consent") - before
    assert counted == (1 if status == "dropped" else 0)
    if status == "dropped":
        assert answer.json()["reason"] == "no_consent"
        assert "set-cookie" not in answer.headers  # nothing stored in the browser either


def test_dropped_beacon_never_reaches_meta(
    gateway: httpx.Client, emulator: RunningEmulator
) -> None:
    refused = beacon(gateway, STRICT_PIXEL).json()["event_id"]
    granted = beacon(gateway, STRICT_PIXEL, consent=True).json()["event_id"]
    delivered(emulator, STRICT_PIXEL, granted)  # sent after the refused one
    assert all(e["event"]["event_id"] != refused for e in emulator.state.events(STRICT_PIXEL))


def test_gpc_sends_with_ldu(gateway: httpx.Client, emulator: RunningEmulator) -> None:
    answer = beacon(
        gateway,
        OPEN_PIXEL,
        user_data={"state": "CA"},
        headers={"Sec-GPC": "1"},
    ).json()
    assert answer["status"] == "queued"
    event = delivered(emulator, OPEN_PIXEL, answer["event_id"])
    assert event["data_processing_options"] == ["LDU"]
    assert event["data_processing_options_country"] == 1
    assert event["data_processing_options_state"] == 1000


def test_beacon_without_gpc_has_no_ldu(gateway: httpx.Client, emulator: RunningEmulator) -> None:
    answer = beacon(gateway, OPEN_PIXEL, user_data={"state": "CA"}).json()
    event = delivered(emulator, OPEN_PIXEL, answer["event_id"])
    assert "data_processing_options" not in event


@pytest.mark.parametrize(
    ("user_data", "expected"),
    [
        ({"state": "California"}, ["LDU", 1, 1000]),
        ({"st": "NY"}, None),
        ({"country": "DE"}, None),
        ({}, ["LDU", 1, 0]),  # default_country US, state unknown: Meta geolocates the state
    ],
)
def test_server_events_get_the_pixels_ldu_policy(
    gateway: httpx.Client,
    emulator: RunningEmulator,
    user_data: dict[str, Any],
    expected: list[Any] | None,
) -> None:
    event_id = f"s-{uuid.uuid4()}"
    event = {
        "event_name": "Purchase",
        "event_time": int(time.time()),
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "email": "someone@example.com",
            "client_ip_address": PUBLIC_IP,
            "client_user_agent": PERSON_UA,
            **user_data,
        },
        "custom_data": {"value": 1, "currency": "USD"},
    }
    response = gateway.post(
        "/v1/events",
        json={"pixel_id": LDU_PIXEL, "data": [event]},
        headers={"Authorization": f"Bearer {INGEST_KEY}"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["results"][0]["status"] == "queued", response.text
    wire = delivered(emulator, LDU_PIXEL, event_id)
    got = (
        [
            wire["data_processing_options"][0],
            wire["data_processing_options_country"],
            wire["data_processing_options_state"],
        ]
        if "data_processing_options" in wire
        else None
    )
    assert got == expected


@pytest.mark.parametrize(
    ("pixel_id", "user_agent", "status"),
    [
        (OPEN_PIXEL, GOOGLEBOT, "dropped"),
        (OPEN_PIXEL, "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0.0.0", "dropped"),
        (OPEN_PIXEL, PERSON_UA, "queued"),
        (BOTS_ALLOWED_PIXEL, GOOGLEBOT, "queued"),
    ],
)
def test_bot_filtering(gateway: httpx.Client, pixel_id: str, user_agent: str, status: str) -> None:
    before = dropped_count(gateway, pixel_id, "bot")
    answer = beacon(gateway, pixel_id, user_agent=user_agent).json()
    assert answer["status"] == status
    assert dropped_count(gateway, pixel_id, "bot") - before == (1 if status == "dropped" else 0)


def test_session_click_id_builds_fbc_and_its_cookie(
    gateway: httpx.Client, emulator: RunningEmulator
) -> None:
    response = beacon(gateway, OPEN_PIXEL, fbclid="AbC123_x-Y")
    answer = response.json()
    cookies = response.headers.get_list("set-cookie")
    [fbc_cookie] = [c for c in cookies if c.startswith("_fbc=")]
    [fbp_cookie] = [c for c in cookies if c.startswith("_fbp=")]
    # Same scope as the _fbp cookie the gateway writes for this page.
    assert fbc_cookie.split(";", 1)[1] == fbp_cookie.split(";", 1)[1]
    event = delivered(emulator, OPEN_PIXEL, answer["event_id"])
    assert re.fullmatch(r"fb\.1\.\d{13}\.AbC123_x-Y", event["user_data"]["fbc"])
    assert fbc_cookie.startswith(f"_fbc={event['user_data']['fbc']};")


def test_session_click_id_keeps_a_cookie_for_the_same_click(
    gateway: httpx.Client, emulator: RunningEmulator
) -> None:
    existing = "fb.1.1700000000000.AbC123"
    response = beacon(gateway, OPEN_PIXEL, fbclid="AbC123", headers={"Cookie": f"_fbc={existing}"})
    event = delivered(emulator, OPEN_PIXEL, response.json()["event_id"])
    assert event["user_data"]["fbc"] == existing


def test_session_click_id_that_is_not_one_is_ignored(
    gateway: httpx.Client, emulator: RunningEmulator
) -> None:
    response = beacon(gateway, OPEN_PIXEL, fbclid="not a click id;")
    event = delivered(emulator, OPEN_PIXEL, response.json()["event_id"])
    assert "fbc" not in event["user_data"]
    assert not any(c.startswith("_fbc=") for c in response.headers.get_list("set-cookie"))


def test_the_pages_own_click_id_wins_over_the_session_one(
    gateway: httpx.Client, emulator: RunningEmulator
) -> None:
    response = beacon(
        gateway,
        OPEN_PIXEL,
        fbclid="OlderClick",
        page_url="https://shop.example/landing?fbclid=NewerClick",
    )
    event = delivered(emulator, OPEN_PIXEL, response.json()["event_id"])
    assert event["user_data"]["fbc"].endswith(".NewerClick")
