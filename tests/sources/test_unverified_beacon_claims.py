"""An unverified beacon cannot keep an authenticated event from Meta.

``POST /v1/collect`` has no credential: anyone can send a ``Purchase`` naming a shop's
next order (its ``event_id`` or only its ``order_id``).  Such an event claims its dedup
and order-ledger keys in a namespace of its own (``capirelay.orders.UNVERIFIED_ID_PREFIX``),
so the signed WooCommerce webhook of that order is still queued and reaches Meta (the
emulator) with its real value.  A verified beacon (a token minted by the shop's server)
is authenticated and keeps blocking the order's later copies; unverified beacons still
dedupe each other, and an authenticated claim still makes a later beacon a duplicate.
Runs on both storage backends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from capirelay import mint_beacon_token
from capirelay.config import PixelSettings, Secret, Settings, WebhookSettings
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.server import create_app
from server.conftest import (
    INGEST_KEY,
    PIXEL_ID,
    SHOP_ORIGIN,
    TOKEN_ENV,
    gateway_settings,
    serve_in_thread,
)
from vendor_data import vendor_fixture
from waiting import wait_for

from .test_webhooks_gateway import unique_id
from .webhook_data import SIGNERS

ACCESS_TOKEN = "claims-test-access-token"
INGEST_KEY_ENV = "CAPIRELAY_TEST_INGEST_KEY"
WOO_SECRET = "wc_claims_secret_0123"
WOO_SECRET_ENV = "CAPIRELAY_TEST_WEBHOOK_CLAIMS_WOO"
BEACON_SECRET = "beacon-claims-secret"
BEACON_HEADERS = {"Origin": SHOP_ORIGIN, "User-Agent": "Mozilla/5.0 (Macintosh) Safari/605.1"}


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL_ID: ACCESS_TOKEN}) as em:
        yield em


@pytest.fixture(scope="module")
def settings(storage_url: str, emulator: RunningEmulator) -> Iterator[Settings]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, ACCESS_TOKEN)
        patch.setenv(INGEST_KEY_ENV, INGEST_KEY)
        patch.setenv(WOO_SECRET_ENV, WOO_SECRET)
        patch.delenv("CAPIRELAY_CONFIG", raising=False)
        hooks = {
            "woo": WebhookSettings(
                preset="woocommerce", pixel_id=PIXEL_ID, secret=Secret(env=WOO_SECRET_ENV)
            )
        }
        # Default beacon policy (no require_verified): unverified Purchases are accepted.
        pixel = PixelSettings(
            access_token=Secret(env=TOKEN_ENV),
            default_country="US",
            allowed_origins=[SHOP_ORIGIN],
            verification_secret=Secret(value=BEACON_SECRET),
        )
        yield gateway_settings(storage_url, emulator.url, webhooks=hooks, pixels={PIXEL_ID: pixel})


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        yield http


def _received(emulator: RunningEmulator, event_id: str) -> list[dict[str, Any]]:
    return [
        e["event"] for e in emulator.state.events(PIXEL_ID) if e["event"]["event_id"] == event_id
    ]


def _woo(order_id: int) -> dict[str, Any]:
    order: dict[str, Any] = vendor_fixture("woocommerce_rest_v3_order_727.json")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 60))
    order.update(id=order_id, status="processing", date_paid_gmt=stamp, date_created_gmt=stamp)
    return order


def _post_woo(client: httpx.Client, order: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(order).encode()
    headers = SIGNERS["woocommerce"](body, WOO_SECRET, time.time(), "order.updated")
    response = client.post("/v1/webhooks/woo", content=body, headers=headers)
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    return dict(result)


def _beacon(
    client: httpx.Client,
    event_id: str,
    order_id: int,
    *,
    value: float = 0.01,
    currency: str = "USD",
    token: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pixel_id": PIXEL_ID,
        "event_name": "Purchase",
        "event_id": event_id,
        "custom_data": {"value": value, "currency": currency, "order_id": str(order_id)},
    }
    if token is not None:
        body["token"] = token
    response = client.post("/v1/collect", json=body, headers=BEACON_HEADERS)
    assert response.status_code == 202, response.text
    return dict(response.json())


def _server_purchase(client: httpx.Client, event_id: str, order_id: int) -> str:
    response = client.post(
        "/v1/events",
        headers={"Authorization": f"Bearer {INGEST_KEY}"},
        json={
            "pixel_id": PIXEL_ID,
            "data": [
                {
                    "event_name": "Purchase",
                    "event_time": int(time.time()),
                    "event_id": event_id,
                    "action_source": "system_generated",
                    "user_data": {"em": "john.doe@example.com"},
                    "custom_data": {"value": 54.8, "currency": "EUR", "order_id": str(order_id)},
                }
            ],
        },
    )
    assert response.status_code == 202, response.text
    return str(response.json()["results"][0]["status"])


def test_a_forged_beacon_purchase_does_not_block_the_signed_webhook(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    order_id = unique_id()
    order = _woo(order_id)
    event_id = f"woocommerce:{order_id}:Purchase"
    assert _beacon(client, event_id, order_id)["status"] == "queued"
    assert _post_woo(client, order)["status"] == "queued"
    # Meta gets the real sale (it merges the two copies itself: same event_id and name).
    wait_for(
        lambda: any(
            e["custom_data"]["value"] == float(order["total"])
            for e in _received(emulator, event_id)
        )
    )


def test_a_forged_beacon_guessing_only_the_order_id_does_not_block_the_webhook(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    order_id = unique_id()
    order = _woo(order_id)
    assert _beacon(client, f"guess-{order_id}", order_id)["status"] == "queued"
    event_id = f"woocommerce:{order_id}:Purchase"
    assert _post_woo(client, order)["status"] == "queued"
    wait_for(lambda: _received(emulator, event_id))
    [real] = _received(emulator, event_id)
    assert real["custom_data"]["value"] == float(order["total"])


def test_a_verified_beacon_purchase_still_blocks_the_later_webhook_of_its_order(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    order_id = unique_id()
    order = _woo(order_id)
    event_id = f"thank-you-{order_id}"
    value, currency = float(order["total"]), str(order["currency"])
    token = mint_beacon_token(
        BEACON_SECRET,
        pixel_id=PIXEL_ID,
        event_name="Purchase",
        event_id=event_id,
        value=order["total"],
        currency=currency,
        ttl_seconds=600,
    )
    answer = _beacon(client, event_id, order_id, value=value, currency=currency, token=token)
    assert answer["status"] == "queued"
    wait_for(lambda: _received(emulator, event_id))
    assert _post_woo(client, order)["status"] == "duplicate"  # the order ledger's entry


def test_two_unverified_beacons_with_one_event_id_are_sent_once(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    order_id = unique_id()
    event_id = f"browser-{order_id}"
    assert _beacon(client, event_id, order_id)["status"] == "queued"
    second = _beacon(client, event_id, order_id)
    assert (second["event_id"], second["status"]) == (event_id, "duplicate")
    # Another id naming the same order: the unverified ledger entry dedupes it too.
    assert _beacon(client, f"other-{order_id}", order_id)["status"] == "duplicate"


def test_an_authenticated_claim_makes_a_later_unverified_beacon_a_duplicate(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    order_id = unique_id()
    event_id = f"server-{order_id}"
    assert _server_purchase(client, event_id, order_id) == "queued"
    wait_for(lambda: _received(emulator, event_id))
    answer = _beacon(client, event_id, order_id)
    assert (answer["event_id"], answer["status"]) == (event_id, "duplicate")
    # The same order under another event id: the authenticated ledger entry holds it.
    assert _beacon(client, f"browser-{order_id}", order_id)["status"] == "duplicate"
