"""The beacon's event allowlist and server-verified purchases, on a live gateway per backend.

Pixel ``PIXEL_ID`` is a shop that allows its funnel's event names from browsers
and requires a server-signed token on ``Purchase``; ``OTHER_PIXEL_ID`` allows
any name and accepts unverified purchases (counted as such).  Tokens are
minted with the library's public helper, as the shop's server would.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from capirelay import mint_beacon_token
from capirelay.config import PixelSettings, Secret, Settings
from capirelay.emulator.testing import RunningEmulator
from capirelay.server import create_app
from waiting import wait_for

from .conftest import (
    OTHER_PIXEL_ID,
    OTHER_TOKEN_ENV,
    PIXEL_ID,
    SHOP_ORIGIN,
    TOKEN_ENV,
    gateway_settings,
    serve_in_thread,
)

SECRET = "shop-server-signing-secret-0123456789"
OTHER_SECRET = "other-pixel-signing-secret"
SHOP_EVENTS = ["PageView", "ViewContent", "AddToCart", "InitiateCheckout", "Purchase"]
HEADERS = {"Origin": SHOP_ORIGIN, "User-Agent": "Mozilla/5.0 (Macintosh) Safari/605.1.15"}


@pytest.fixture(scope="module")
def defended_settings(
    db_path: Path,
    storage_url: str,
    emulator: RunningEmulator,
    secrets_in_env: pytest.MonkeyPatch,
) -> Settings:
    secrets_in_env.chdir(db_path.parent)
    secrets_in_env.setenv("CAPIRELAY_TEST_BEACON_SECRET", SECRET)
    return gateway_settings(
        storage_url,
        emulator.url,
        pixels={
            PIXEL_ID: PixelSettings(
                access_token=Secret(env=TOKEN_ENV),
                default_country="US",
                allowed_origins=[SHOP_ORIGIN],
                beacon_events=SHOP_EVENTS,
                require_verified=["Purchase"],
                verification_secret=Secret(env="CAPIRELAY_TEST_BEACON_SECRET"),
            ),
            OTHER_PIXEL_ID: PixelSettings(
                access_token=Secret(env=OTHER_TOKEN_ENV),
                allowed_origins=[SHOP_ORIGIN],
                verification_secret=Secret(value=OTHER_SECRET),
            ),
        },
    )


@pytest.fixture(scope="module")
def gateway(defended_settings: Settings) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(create_app(defended_settings)) as url,
        httpx.Client(base_url=url, headers=HEADERS, timeout=10) as http,
    ):
        yield http


def purchase(
    event_id: str, *, value: Any = 25.0, currency: str = "EUR", pixel_id: str = PIXEL_ID
) -> dict[str, Any]:
    return {
        "pixel_id": pixel_id,
        "event_name": "Purchase",
        "event_id": event_id,
        "page_url": "https://shop.example/thank-you",
        "custom_data": {"value": value, "currency": currency},
        "user_data": {"email": "shopper@example.com"},
    }


def token_for(event_id: str, **overrides: Any) -> str:
    values: dict[str, Any] = {
        "pixel_id": PIXEL_ID,
        "event_name": "Purchase",
        "event_id": event_id,
        "value": "25.00",
        "currency": "EUR",
        "ttl_seconds": 600,
    }
    values.update(overrides)
    secret = values.pop("secret", SECRET)
    return mint_beacon_token(secret, **values)


def metric(http: httpx.Client, family: str, **labels: str) -> float:
    wanted = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(family + "{"):
            head, _, value = line.rpartition(" ")
            if sorted(re.findall(r'\w+="[^"]*"', head)) == wanted:
                return float(value)
    return 0.0


def sent(emulator: RunningEmulator, event_id: str) -> list[dict[str, Any]]:
    return [e for e in emulator.state.events(PIXEL_ID) if e["event"].get("event_id") == event_id]


# ---------------------------------------------------------------------------
# beacon_events


def test_an_allowlisted_name_is_queued(gateway: httpx.Client, uid: str) -> None:
    body = {"pixel_id": PIXEL_ID, "event_name": "AddToCart", "event_id": f"{uid}cart"}
    answer = gateway.post("/v1/collect", json=body)

    assert answer.status_code == 202 and answer.json()["status"] == "queued"


def test_a_name_outside_the_allowlist_is_refused_with_the_setting_to_change(
    gateway: httpx.Client, uid: str
) -> None:
    refused_before = metric(
        gateway, "capirelay_events_rejected_total", pixel=PIXEL_ID, problem="event_not_allowed"
    )
    body = {"pixel_id": PIXEL_ID, "event_name": "FreeMoney", "event_id": f"{uid}x"}
    answer = gateway.post("/v1/collect", json=body)

    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["code"] == "event_not_allowed"
    assert "'FreeMoney'" in error["message"]
    assert f"pixels.{PIXEL_ID}.beacon_events" in error["message"]
    assert answer.headers["access-control-allow-origin"] == SHOP_ORIGIN, "the page can read it"
    refused_after = metric(
        gateway, "capirelay_events_rejected_total", pixel=PIXEL_ID, problem="event_not_allowed"
    )
    assert refused_after == refused_before + 1


def test_without_an_allowlist_every_name_is_accepted(gateway: httpx.Client, uid: str) -> None:
    body = {"pixel_id": OTHER_PIXEL_ID, "event_name": "FreeMoney", "event_id": f"{uid}y"}
    answer = gateway.post("/v1/collect", json=body)

    assert answer.status_code == 202 and answer.json()["status"] == "queued"


# ---------------------------------------------------------------------------
# Verified purchases


def test_a_valid_token_is_queued_sent_and_counted_as_verified(
    gateway: httpx.Client, emulator: RunningEmulator, uid: str
) -> None:
    event_id = f"{uid}order-1"
    verified_before = metric(
        gateway,
        "capirelay_beacon_verification_total",
        pixel=PIXEL_ID,
        event_name="Purchase",
        result="verified",
    )
    answer = gateway.post("/v1/collect", json={**purchase(event_id), "token": token_for(event_id)})

    assert answer.status_code == 202, answer.text
    assert answer.json()["status"] == "queued"
    [delivered] = wait_for(lambda: sent(emulator, event_id))
    assert delivered["event"]["custom_data"]["value"] == 25.0
    assert "token" not in str(delivered["event"]), "the token stays at the gateway"
    verified_after = metric(
        gateway,
        "capirelay_beacon_verification_total",
        pixel=PIXEL_ID,
        event_name="Purchase",
        result="verified",
    )
    assert verified_after == verified_before + 1


def test_a_replayed_token_is_answered_duplicate(gateway: httpx.Client, uid: str) -> None:
    event_id = f"{uid}order-2"
    body = {**purchase(event_id), "token": token_for(event_id)}
    first = gateway.post("/v1/collect", json=body)
    replay = gateway.post("/v1/collect", json=body)

    assert first.json()["status"] == "queued"
    assert replay.status_code == 202 and replay.json()["status"] == "duplicate"


def test_an_expired_token_is_refused(gateway: httpx.Client, uid: str) -> None:
    event_id = f"{uid}order-3"
    stale = token_for(event_id, now=time.time() - 3600, ttl_seconds=600)
    answer = gateway.post("/v1/collect", json={**purchase(event_id), "token": stale})

    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "token_expired"


def test_a_token_living_past_the_dedup_window_is_refused(gateway: httpx.Client, uid: str) -> None:
    event_id = f"{uid}order-4"
    forever = token_for(event_id, now=time.time() + 3 * 86400)
    answer = gateway.post("/v1/collect", json={**purchase(event_id), "token": forever})

    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "token_lifetime"


@pytest.mark.parametrize(
    ("field", "tampered"),
    [
        ("value", {"value": 2.5}),
        ("value", {"value": 25.001}),
        ("currency", {"currency": "JPY"}),
        ("event_id", {"event_id": "someone-elses-order"}),
        ("event_name", {"event_name": "AddToCart"}),
        ("pixel", {"pixel_id": OTHER_PIXEL_ID}),
    ],
)
def test_a_token_for_another_value_currency_or_event_is_refused(
    gateway: httpx.Client, uid: str, field: str, tampered: dict[str, Any]
) -> None:
    event_id = f"{uid}order-5"
    body = purchase(event_id)
    body["token"] = token_for(event_id)
    if "value" in tampered or "currency" in tampered:
        body["custom_data"] = {**body["custom_data"], **tampered}
    else:
        body.update(tampered)
    answer = gateway.post("/v1/collect", json=body)

    # (For the other pixel: it has its own secret, so this pixel's token means nothing there.)
    assert answer.status_code == 403, field
    error = answer.json()["error"]
    assert error["code"] == "token_mismatch"
    assert "custom_data.value" in error["message"] and SECRET not in error["message"]


def test_a_tampered_signature_is_refused(gateway: httpx.Client, uid: str) -> None:
    event_id = f"{uid}order-6"
    token = token_for(event_id)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    answer = gateway.post("/v1/collect", json={**purchase(event_id), "token": flipped})

    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "token_mismatch"


def test_a_malformed_token_is_refused(gateway: httpx.Client, uid: str) -> None:
    answer = gateway.post("/v1/collect", json={**purchase(f"{uid}o7"), "token": "hello"})

    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "token_malformed"


def test_require_verified_refuses_an_unverified_purchase(gateway: httpx.Client, uid: str) -> None:
    answer = gateway.post("/v1/collect", json=purchase(f"{uid}order-8"))

    assert answer.status_code == 403
    error = answer.json()["error"]
    assert error["code"] == "verification_required"
    assert "token" in error["message"]


def test_a_token_needs_the_event_id_it_was_signed_for(gateway: httpx.Client, uid: str) -> None:
    body = {**purchase(f"{uid}order-9"), "token": token_for(f"{uid}order-9")}
    del body["event_id"]
    answer = gateway.post("/v1/collect", json=body)

    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "token_without_event_id"


def test_without_require_verified_an_unverified_purchase_is_accepted_and_counted(
    gateway: httpx.Client, uid: str
) -> None:
    labels = {"pixel": OTHER_PIXEL_ID, "event_name": "Purchase"}
    before = metric(gateway, "capirelay_beacon_verification_total", result="unverified", **labels)
    answer = gateway.post("/v1/collect", json=purchase(f"{uid}order-10", pixel_id=OTHER_PIXEL_ID))

    assert answer.status_code == 202 and answer.json()["status"] == "queued"
    after = metric(gateway, "capirelay_beacon_verification_total", result="unverified", **labels)
    assert after == before + 1


def test_a_verified_purchase_on_a_pixel_without_require_verified_is_still_checked(
    gateway: httpx.Client, uid: str
) -> None:
    event_id = f"{uid}order-11"
    good = token_for(event_id, pixel_id=OTHER_PIXEL_ID, secret=OTHER_SECRET)
    body = {**purchase(event_id, pixel_id=OTHER_PIXEL_ID), "token": good}
    accepted = gateway.post("/v1/collect", json=body)
    tampered = gateway.post(
        "/v1/collect",
        json={**body, "event_id": f"{uid}order-12", "custom_data": {"value": 1, "currency": "EUR"}},
    )

    assert accepted.status_code == 202 and accepted.json()["status"] == "queued"
    assert tampered.status_code == 403
    assert tampered.json()["error"]["code"] == "token_mismatch"
