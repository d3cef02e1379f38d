"""``POST /v1/webhooks/{name}`` end to end: signed vendor payloads in over a real loopback socket,
the gateway's SQLite outbox, the emulator as Meta out."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from capirelay.config import ConfigError, Secret, Settings, WebhookSettings
from capirelay.delivery.engine import DeliveryEngine
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.metrics import Metrics
from capirelay.ops.trace import iso, status_of, story
from capirelay.orders import order_id_of
from capirelay.outbox import NewEvent, SQLiteOutbox, open_outbox
from capirelay.outbox.receipts import MetaAnswer, TraceRecord
from capirelay.server import create_app
from capirelay.server.routes_webhooks import load_webhooks
from server.conftest import (
    INGEST_KEY,
    PIXEL_ID,
    gateway_settings,
    serve_in_thread,
)
from vendor_data import vendor_fixture
from waiting import wait_for

from .webhook_data import SIGNERS, fixture

REPO = Path(__file__).resolve().parents[2]
CRM_MAPPING = REPO / "examples" / "mappings" / "crm.toml"
ACCESS_TOKEN = "webhook-test-access-token"
TOKEN_ENV = "CAPIRELAY_TEST_ACCESS_TOKEN"
INGEST_KEY_ENV = "CAPIRELAY_TEST_INGEST_KEY"
SECRETS = {
    "shop": "shpss_test_secret_0123",
    "woo": "wc_test_secret_4567",
    "stripe": "whsec_test_secret_89ab",
    "crm": "crm_test_secret_cdef",
}
DAY = 86400
PRESET_OF = {
    "shop": "shopify",
    "woo": "woocommerce",
    "stripe": "stripe",
    "crm": "mapping",
    "shop-test": "shopify",
    "stripe-test": "stripe",
}
WEBHOOK_TEST_CODE = "TEST_WEBHOOK_42"


def secret_env(name: str) -> str:
    return f"CAPIRELAY_TEST_WEBHOOK_{name.upper().replace('-', '_')}"


def webhook_settings() -> dict[str, WebhookSettings]:
    hooks = {
        name: WebhookSettings(
            preset=PRESET_OF[name],
            pixel_id=PIXEL_ID,
            secret=Secret(env=secret_env(name)),
            mapping=CRM_MAPPING if name == "crm" else None,
        )
        for name in SECRETS
    }
    hooks["unset"] = WebhookSettings(
        preset="shopify", pixel_id=PIXEL_ID, secret=Secret(env="CAPIRELAY_TEST_NEVER_SET")
    )
    for name in ("shop-test", "stripe-test"):
        hooks[name] = WebhookSettings(
            preset=PRESET_OF[name],
            pixel_id=PIXEL_ID,
            secret=Secret(env=secret_env(name)),
            test_event_code=WEBHOOK_TEST_CODE,
        )
    return hooks


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL_ID: ACCESS_TOKEN}) as em:
        yield em


@pytest.fixture(scope="module")
def settings(storage_url: str, emulator: RunningEmulator) -> Iterator[Settings]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, ACCESS_TOKEN)
        patch.setenv(INGEST_KEY_ENV, INGEST_KEY)
        patch.delenv("CAPIRELAY_CONFIG", raising=False)
        patch.delenv("CAPIRELAY_TEST_NEVER_SET", raising=False)
        for name, secret in SECRETS.items():
            patch.setenv(secret_env(name), secret)
        patch.setenv(secret_env("shop-test"), SECRETS["shop"])
        patch.setenv(secret_env("stripe-test"), SECRETS["stripe"])
        yield gateway_settings(storage_url, emulator.url, webhooks=webhook_settings())


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        yield http


def unique_id() -> int:
    return random.randrange(10**11, 10**12)


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def iso_days_ago(days: float) -> str:
    return datetime.fromtimestamp(time.time() - days * DAY, UTC).isoformat(timespec="seconds")


def post(
    client: httpx.Client, name: str, payload: Any, topic: str = "", *, secret: str | None = None
) -> httpx.Response:
    body = json.dumps(payload).encode()
    key = secret or SECRETS[name.removesuffix("-test")]
    headers = SIGNERS[PRESET_OF[name]](body, key, time.time(), topic)
    return client.post(f"/v1/webhooks/{name}", content=body, headers=headers)


def delivered(emulator: RunningEmulator, event_id: str) -> list[dict[str, Any]]:
    return [
        stored["event"]
        for stored in emulator.state.events(PIXEL_ID)
        if stored["event"].get("event_id") == event_id
    ]


def wait_delivered(emulator: RunningEmulator, event_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = wait_for(lambda: delivered(emulator, event_id))
    return found[0]


def stored_trace(storage_url: str, event_id: str) -> TraceRecord:
    """What the gateway's storage holds for ``event_id`` (receipts and queued rows)."""

    async def read() -> TraceRecord:
        box = open_outbox(storage_url)
        await box.open()
        try:
            return await box.trace(event_id, pixel_id=PIXEL_ID)
        finally:
            await box.close()

    return asyncio.run(read())


def assert_sent_once(storage_url: str, emulator: RunningEmulator, event_id: str) -> None:
    """Delivered once, and nothing left in the queue that could send a second copy."""
    trace = wait_for(lambda: (t := stored_trace(storage_url, event_id)).delivered and t)
    assert trace.pending == [], "a second copy is queued"
    assert len(delivered(emulator, event_id)) == 1


def shopify_order(**overrides: Any) -> dict[str, Any]:
    order = fixture("shopify", "orders_paid.json")
    now = iso_now()
    order.update(id=unique_id(), created_at=now, processed_at=now, updated_at=now)
    order.update(overrides)
    return order


def woo_order(status: str, order_id: int) -> dict[str, Any]:
    order = fixture("woocommerce", "order_processing.json")
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    order.update(id=order_id, status=status, date_paid_gmt=now, date_created_gmt=now)
    return order


def stripe_event(name: str, payment_intent: str, *, livemode: bool = True) -> dict[str, Any]:
    event = fixture("stripe", name)  # the samples are test-mode events: livemode false
    event["created"] = int(time.time())
    obj = event["data"]["object"]
    event["livemode"] = obj["livemode"] = livemode
    if obj["object"] == "payment_intent":
        obj["id"] = payment_intent
    else:
        obj["payment_intent"] = payment_intent
    return event


# ---------------------------------------------------------------------------
# Shopify


def test_a_paid_shopify_order_is_sent_once_even_when_redelivered(
    client: httpx.Client, emulator: RunningEmulator, storage_url: str
) -> None:
    order = shopify_order()
    event_id = f"shopify:{order['id']}:Purchase"
    first = post(client, "shop", order, "orders/paid")
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "processed"
    [result] = first.json()["results"]
    assert (result["event_name"], result["event_id"], result["status"]) == (
        "Purchase",
        event_id,
        "queued",
    )
    sent = wait_delivered(emulator, event_id)
    assert sent["custom_data"]["value"] == 238.9
    # order_status_url is a capability link (?key=...): only the storefront is sent.
    assert sent["event_source_url"] == "https://jsmith.myshopify.com/"
    assert sent["user_data"]["em"][0] != order["email"]  # hashed before storage
    assert order["email"] not in json.dumps(sent)

    again = post(client, "shop", order, "orders/paid")
    assert again.status_code == 200
    assert again.json()["results"][0]["status"] == "duplicate"
    assert_sent_once(storage_url, emulator, event_id)


def test_a_shopify_order_paid_days_after_it_was_placed_is_dated_at_its_payment(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    # Bank transfer, cash on delivery, payment terms: orders/paid comes when the money does.
    # Dated at its placing (processed_at), Meta would refuse it as older than 7 days.
    placed, paid = iso_days_ago(10), iso_now()
    order = shopify_order(created_at=placed, processed_at=placed, updated_at=paid)
    [result] = post(client, "shop", order, "orders/paid").json()["results"]
    assert result["status"] == "queued", result
    sent = wait_delivered(emulator, result["event_id"])
    assert sent["event_time"] == int(datetime.fromisoformat(paid).timestamp())


def test_a_shopify_order_placed_and_paid_at_once_is_dated_at_checkout(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    now = time.time()
    at_checkout = iso_now()
    order = shopify_order(created_at=at_checkout, processed_at=at_checkout, updated_at=at_checkout)
    [result] = post(client, "shop", order, "orders/paid").json()["results"]
    sent = wait_delivered(emulator, result["event_id"])
    assert abs(sent["event_time"] - now) < 5


def test_an_imported_shopify_order_keeps_its_date_and_the_answer_says_what_a_webhook_can_do(
    client: httpx.Client,
) -> None:
    # An import of past orders: Shopify records it now, with processed_at set to the original
    # date. It is history, not today's purchase, so it is not sent dated at its import.
    order = shopify_order(created_at=iso_now(), processed_at=iso_days_ago(10), updated_at=iso_now())
    [result] = post(client, "shop", order, "orders/paid").json()["results"]
    assert result["status"] == "rejected"
    [too_old] = [p for p in result["problems"] if p["code"] == "event_too_old"]
    # Not "send it sooner": the vendor decides when a webhook comes.
    assert "send it sooner" not in too_old["message"]
    assert too_old["message"].startswith("event_time is more than 7 days in the past; ")
    assert "a webhook cannot be sent sooner" in too_old["message"]
    assert "map event_time" in too_old["message"]
    assert "imported with its original date" in too_old["message"]


def test_a_rejected_webhook_event_leaves_a_receipt_and_a_log_line(
    client: httpx.Client, storage_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Shopify got a 200 and will not retry: before, nothing but a counter knew of the order
    # (trace said "never received").
    order = shopify_order(created_at=iso_now(), processed_at=iso_days_ago(10), updated_at=iso_now())
    with caplog.at_level(logging.WARNING, logger="capirelay.webhooks"):
        [result] = post(client, "shop", order, "orders/paid").json()["results"]
    assert result["status"] == "rejected"
    event_id = result["event_id"]
    [line] = [r.getMessage() for r in caplog.records if event_id in r.getMessage()]
    assert "event_too_old" in line and "@" not in line  # the code, never the buyer's email
    record = stored_trace(storage_url, event_id)
    assert status_of(record) == "rejected"  # as its story says: "dropped" is for policies
    [step] = [s for s in story(record) if s.what == "rejected"]
    assert "event_too_old" in step.detail and "will not send it again" in step.detail
    # Found by its order id too, as the dashboard's search looks an order up.
    order_id = str(order["id"])

    async def by_order() -> list[str]:
        box = open_outbox(storage_url)
        await box.open()
        try:
            return await box.event_ids_for_order(order_id, limit=5)
        finally:
            await box.close()

    assert event_id in asyncio.run(by_order())


def test_a_signed_order_whose_id_holds_nul_is_answered_200_with_a_rejected_result(
    client: httpx.Client,
) -> None:
    # A 5xx here would make Shopify retry the delivery for days; the event is the problem.
    order = shopify_order()
    order["id"] = f"{unique_id()}\x00"
    response = post(client, "shop", order, "orders/paid")
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert result["status"] == "rejected"
    assert result["event_id"] == ""  # the hostile id is not echoed
    assert {(p["code"], p["field"]) for p in result["problems"]} >= {
        ("control_character", "event_id")
    }
    assert client.get("/readyz").status_code == 200
    assert (
        post(client, "shop", shopify_order(), "orders/paid").json()["results"][0]["status"]
        == "queued"
    )


@pytest.mark.parametrize("preset", ["shop", "woo"])
def test_a_signed_order_whose_shop_url_is_malformed_is_answered_200_naming_the_field(
    client: httpx.Client, preset: str
) -> None:
    # urlsplit raises ValueError on an unclosed IPv6 bracket; a 500 would be retried forever.
    # The URL is left out like any value a transform refuses (a "mailto:" one is too), and a
    # website event without event_source_url is one Meta refuses: rejected, with both reasons.
    if preset == "shop":
        order = shopify_order(order_status_url="http://[::1/orders/1/authenticate?key=s")
        topic, event_id = "orders/paid", f"shopify:{order['id']}:Purchase"
    else:
        order = woo_order("processing", unique_id())
        order["payment_url"] = "http://[::1/checkout/order-pay/7/?key=wc_order_1"
        topic, event_id = "order.updated", f"woocommerce:{order['id']}:Purchase"
    response = post(client, preset, order, topic)
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert (result["event_id"], result["status"]) == (event_id, "rejected"), result
    codes = {(p["code"], p["field"]) for p in result["problems"]}
    assert codes >= {
        ("mapping_transform_failed", "event_source_url"),
        ("missing_website_field", "event_source_url"),
    }, codes
    assert "[::1" not in response.text
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    "tamper",
    ["body", "secret", "missing header"],
)
def test_a_bad_signature_is_401_and_queues_nothing(
    client: httpx.Client, emulator: RunningEmulator, tamper: str
) -> None:
    order = shopify_order()
    body = json.dumps(order).encode()
    secret = "not-the-secret" if tamper == "secret" else SECRETS["shop"]
    headers = SIGNERS["shopify"](body, secret, time.time(), "orders/paid")
    if tamper == "missing header":
        del headers["X-Shopify-Hmac-Sha256"]
    if tamper == "body":
        body = body.replace(b'"238.90"', b'"0.01"')
    response = client.post("/v1/webhooks/shop", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_signature"
    # Had anything been queued, the genuine delivery would now be a duplicate.
    genuine = post(client, "shop", order, "orders/paid")
    assert genuine.json()["results"][0]["status"] == "queued"


def test_a_shopify_refund_is_ignored_with_200_because_no_rule_is_for_its_topic(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="capirelay.webhooks")
    refund = fixture("shopify", "refunds_create.json")
    response = post(client, "shop", refund, "refunds/create")
    assert response.status_code == 200
    assert response.json() == {
        "webhook": "shop",
        "topic": "refunds/create",
        "status": "ignored",
        "reason": "no_rule_for_topic",
        "message": "no rule of the mapping is for topic 'refunds/create' "
        "(its rules are for: checkouts/create, orders/paid)",
        "rules": [],
        "results": [],
    }
    [line] = webhook_log(caplog, "refunds/create")
    assert f"refunds/create {refund['id']} ignored (no_rule_for_topic)" in line


def test_shopifys_sample_notification_on_orders_paid_says_which_condition_did_not_hold(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    # "Send test notification" posts Shopify's documented sample order: financial_status
    # "voided", so the Purchase rule's condition is false.  Say so; it is not a topic no
    # rule maps.
    caplog.set_level(logging.INFO, logger="capirelay.webhooks")
    sample = vendor_fixture("shopify_documented_order.json")
    answer = post(client, "shop", sample, "orders/paid").json()
    assert answer["status"] == "ignored"
    assert answer["reason"] == "condition_false"
    assert answer["rules"] == [
        {
            "rule": "order paid",
            "when": "financial_status == 'paid'",
            "event_id": "shopify:820982911946154508:Purchase",
        }
    ]
    assert "rule 'order paid' only when financial_status == 'paid'" in answer["message"]
    [line] = webhook_log(caplog, "orders/paid shopify:820982911946154508:Purchase")
    assert "ignored (condition_false)" in line
    assert "financial_status == 'paid'" in line
    for personal in ("jon@example.com", "Steve", "Shipper", "Shippington"):
        assert personal not in line


def webhook_log(caplog: pytest.LogCaptureFixture, containing: str) -> list[str]:
    return wait_for(
        lambda: [
            r.getMessage()
            for r in caplog.records
            if r.name == "capirelay.webhooks" and containing in r.getMessage()
        ]
    )


def test_an_unpaid_shopify_order_is_no_purchase(client: httpx.Client) -> None:
    order = fixture("shopify", "orders_create_pending.json")
    assert post(client, "shop", order, "orders/create").json()["reason"] == "no_rule_for_topic"
    # Even on the paid topic, the condition on financial_status holds it back.
    paid_topic = post(client, "shop", order, "orders/paid").json()
    assert (paid_topic["status"], paid_topic["reason"]) == ("ignored", "condition_false")


def test_a_shopify_checkout_is_an_initiate_checkout(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    checkout = fixture("shopify", "checkouts_create.json")
    checkout.update(id=unique_id(), created_at=iso_now())
    response = post(client, "shop", checkout, "checkouts/create")
    [result] = response.json()["results"]
    assert result["event_name"] == "InitiateCheckout" and result["status"] == "queued"
    assert wait_delivered(emulator, f"shopify:{checkout['id']}:InitiateCheckout")


def test_an_event_meta_would_reject_is_answered_200_with_its_problems(
    client: httpx.Client,
) -> None:
    order = shopify_order(currency=None)
    response = post(client, "shop", order, "orders/paid")
    assert response.status_code == 200  # a retry by Shopify could not fix it
    [result] = response.json()["results"]
    assert result["status"] == "rejected"
    assert "invalid_currency" in {problem["code"] for problem in result["problems"]}
    metrics = client.get("/metrics").text
    assert (
        f'capirelay_events_rejected_total{{pixel="{PIXEL_ID}",problem="invalid_currency"}}'
        in metrics
    )


# ---------------------------------------------------------------------------
# WooCommerce


def test_woocommerce_purchase_only_once_paid_and_only_once(
    client: httpx.Client, emulator: RunningEmulator, storage_url: str
) -> None:
    order_id = unique_id()
    event_id = f"woocommerce:{order_id}:Purchase"
    for status in ("pending", "on-hold", "failed", "cancelled"):
        response = post(client, "woo", woo_order(status, order_id), "order.created")
        assert response.json()["status"] == "ignored", status
        assert response.json()["reason"] == "condition_false", status
        assert response.json()["rules"][0]["when"] == (
            "status == 'processing' || status == 'completed'"
        )
    processing = post(client, "woo", woo_order("processing", order_id), "order.updated")
    assert processing.json()["results"][0]["status"] == "queued"
    completed = post(client, "woo", woo_order("completed", order_id), "order.updated")
    assert completed.json()["results"][0]["status"] == "duplicate"
    sent = wait_delivered(emulator, event_id)
    assert sent["custom_data"] == {
        "content_type": "product",
        "value": 54.8,
        "currency": "eur",
        "order_id": str(order_id),
        "content_ids": ["93", "23"],  # variation 23 of product 22: the catalog's item
        "num_items": 3,
        "contents": [
            {"id": "93", "quantity": 2, "item_price": 19.95, "title": "Woo Single #1"},
            {"id": "23", "quantity": 1, "item_price": 10.0, "title": "Ship Your Idea"},
        ],
    }
    assert_sent_once(storage_url, emulator, event_id)


def test_woocommerce_ping_on_webhook_creation_is_answered_200(client: httpx.Client) -> None:
    response = client.post(
        "/v1/webhooks/woo",
        content=b"webhook_id=14",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.json() == {"webhook": "woo", "status": "ping"}


# ---------------------------------------------------------------------------
# Stripe


def test_stripe_checkout_and_payment_intent_of_one_payment_are_one_purchase(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    payment_intent = f"pi_test{unique_id()}"
    event_id = f"stripe:{payment_intent}:Purchase"
    session = post(
        client, "stripe", stripe_event("checkout_session_completed.json", payment_intent)
    )
    assert session.json()["topic"] == "checkout.session.completed"
    assert session.json()["results"][0]["status"] == "queued"
    intent = post(client, "stripe", stripe_event("payment_intent_succeeded.json", payment_intent))
    assert intent.json()["results"][0]["status"] == "duplicate"
    sent = wait_delivered(emulator, event_id)
    assert (sent["custom_data"]["value"], sent["custom_data"]["currency"]) == (49.0, "usd")
    assert sent["action_source"] == "website"


def test_a_stale_stripe_signature_is_401(client: httpx.Client) -> None:
    event = stripe_event("payment_intent_succeeded.json", f"pi_test{unique_id()}")
    body = json.dumps(event).encode()
    stale = time.time() - 301
    headers = SIGNERS["stripe"](body, SECRETS["stripe"], stale)
    response = client.post("/v1/webhooks/stripe", content=body, headers=headers)
    assert response.status_code == 401
    assert "more than 300 s" in response.json()["error"]["message"]


def test_an_unpaid_stripe_checkout_is_no_purchase(client: httpx.Client) -> None:
    payment_intent = f"pi_test{unique_id()}"
    event = stripe_event("checkout_session_unpaid.json", payment_intent)
    answer = post(client, "stripe", event).json()
    assert (answer["status"], answer["reason"]) == ("ignored", "condition_false")
    assert answer["rules"] == [
        {
            "rule": "checkout session paid",
            "when": "data.object.payment_status == 'paid'",
            "event_id": f"stripe:{payment_intent}:Purchase",
        }
    ]


# ---------------------------------------------------------------------------
# Test orders and payments: Meta counts an event without test_event_code as real


def test_a_shopify_test_order_is_not_sent_as_a_live_purchase(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="capirelay.webhooks")
    order = shopify_order(test=True)
    event_id = f"shopify:{order['id']}:Purchase"
    answer = post(client, "shop", order, "orders/paid").json()
    assert (answer["status"], answer["reason"]) == ("ignored", "test_mode")
    assert answer["rules"] == [{"rule": "order paid", "when": None, "event_id": event_id}]
    assert answer["message"].startswith("the payload says test: true: a shopify test")
    assert "set test_event_code in [webhooks.shop] or [pixels." in answer["message"]
    [line] = webhook_log(caplog, f"orders/paid {event_id} ignored (test_mode)")
    assert "test: true" in line and order["email"] not in line
    # Nothing was queued for it: the same order, live, is new.
    live = post(client, "shop", {**order, "test": False}, "orders/paid").json()
    assert live["results"][0]["status"] == "queued"


def test_a_stripe_test_mode_payment_is_not_sent_as_a_live_purchase(client: httpx.Client) -> None:
    payment_intent = f"pi_test{unique_id()}"
    event = stripe_event("payment_intent_succeeded.json", payment_intent, livemode=False)
    answer = post(client, "stripe", event).json()
    assert (answer["status"], answer["reason"]) == ("ignored", "test_mode")
    assert answer["message"].startswith("the payload says livemode: false: a stripe test")
    assert answer["rules"][0]["event_id"] == f"stripe:{payment_intent}:Purchase"


@pytest.mark.parametrize("hook", ["shop-test", "stripe-test"])
def test_test_orders_go_to_metas_test_events_when_a_test_event_code_is_set(
    client: httpx.Client, emulator: RunningEmulator, hook: str
) -> None:
    if hook == "shop-test":
        order = shopify_order(test=True)
        answer = post(client, hook, order, "orders/paid").json()
        event_id = f"shopify:{order['id']}:Purchase"
    else:
        payment_intent = f"pi_test{unique_id()}"
        event = stripe_event("payment_intent_succeeded.json", payment_intent, livemode=False)
        answer = post(client, hook, event).json()
        event_id = f"stripe:{payment_intent}:Purchase"
    assert answer["status"] == "processed"
    assert answer["results"][0]["status"] == "queued"
    sent = wait_for(
        lambda: [
            stored
            for stored in emulator.state.events(PIXEL_ID, test_event_code=WEBHOOK_TEST_CODE)
            if stored["event"]["event_id"] == event_id
        ]
    )
    assert [stored["test_event_code"] for stored in sent] == [WEBHOOK_TEST_CODE]


# ---------------------------------------------------------------------------
# A user's own mapping, and the edges


def test_a_mapping_webhook_uses_the_users_file(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    sample = json.loads((REPO / "examples" / "mappings" / "crm.sample.json").read_text())
    sample["occurred_at"] = iso_now()
    sample["submission"]["id"] = f"sub_{unique_id()}"
    response = post(client, "crm", sample, "contact.form_submitted")
    [result] = response.json()["results"]
    assert (result["rule"], result["event_name"], result["status"]) == (
        "form submitted",
        "Lead",
        "queued",
    )
    sent = wait_delivered(emulator, f"crm:{sample['submission']['id']}:Lead")
    assert sent["custom_data"] == {"lead_source": "crm", "content_name": "Request a demo"}


def test_unknown_webhook_is_404(client: httpx.Client) -> None:
    response = client.post("/v1/webhooks/magento", content=b"{}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_webhook"


def test_a_webhook_whose_secret_is_missing_answers_503_so_the_vendor_retries(
    client: httpx.Client,
) -> None:
    body = json.dumps(shopify_order()).encode()
    headers = SIGNERS["shopify"](body, "anything", time.time(), "orders/paid")
    response = client.post("/v1/webhooks/unset", content=body, headers=headers)
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()


def test_an_oversized_body_is_413_before_the_signature_is_checked(client: httpx.Client) -> None:
    body = b"{" + b" " * (300 * 1024) + b"}"
    response = client.post("/v1/webhooks/shop", content=body)
    assert response.status_code == 413


def test_signed_but_malformed_json_is_400(client: httpx.Client) -> None:
    body = b"{not json"
    headers = SIGNERS["shopify"](body, SECRETS["shop"], time.time(), "orders/paid")
    response = client.post("/v1/webhooks/shop", content=body, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


def test_webhook_outcomes_are_counted(client: httpx.Client) -> None:
    post(client, "shop", fixture("shopify", "refunds_create.json"), "refunds/create")
    # Its own unauthorized request: the test does not lean on an earlier one's.
    forged = post(client, "shop", fixture("shopify", "orders_paid.json"), "orders/paid", secret="x")
    assert forged.status_code == 401
    metrics = client.get("/metrics").text
    assert 'capirelay_webhooks_total{outcome="ignored",webhook="shop"}' in metrics
    assert 'capirelay_webhooks_total{outcome="unauthorized",webhook="shop"}' in metrics


# ---------------------------------------------------------------------------
# Storage failure and start-up checks (in process)


@asynccontextmanager
async def idle_gateway(
    settings: Settings, outbox: SQLiteOutbox
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway on ``outbox`` through ASGI, its lifespan running, with an engine the app
    does not start: nothing drains the outbox, so what storage holds is what the test
    and its requests wrote."""
    app = create_app(settings, outbox=outbox, engine=DeliveryEngine(outbox, settings, Metrics()))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
        ) as http,
    ):
        yield http


async def test_storage_failure_is_503_so_the_vendor_retries(
    settings: Settings, tmp_path: Path
) -> None:
    # A 256 KiB quota stands in for a full disk: SQLite answers SQLITE_FULL past it.
    outbox = SQLiteOutbox(tmp_path / "full.db", max_bytes=256 * 1024)
    await outbox.open()
    try:
        async with idle_gateway(settings, outbox) as http:  # nothing drains it while it fills
            # Big batches until one does not fit, then single small events until none does:
            # what is left is smaller than the webhook's event.
            for size, padding in ((100, 2000), (1, 200)):
                for round_number in range(2000):
                    filler = await http.post(
                        "/v1/events",
                        headers={"Authorization": f"Bearer {INGEST_KEY}"},
                        json={"pixel_id": PIXEL_ID, "data": filler_events(size, padding)},
                    )
                    if filler.status_code == 503:
                        break
                assert filler.status_code == 503
            body = json.dumps(shopify_order()).encode()
            headers = SIGNERS["shopify"](body, SECRETS["shop"], time.time(), "orders/paid")
            response = await http.post("/v1/webhooks/shop", content=body, headers=headers)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "storage_unavailable"
    finally:
        await outbox.close()


RAW_ORDER_MAPPING = """
[[event]]
name = "order"
[event.set]
event_name = "Purchase"
action_source = "system_generated"
[event.map]
event_id = { path = "id", transform = "str", format = "raw:{}:Purchase" }
event_time = "time"
custom_data.order_id = "order_id"
"""


@pytest.mark.parametrize(
    "order_id", [1001, 1001.0, 1001.5, "  A-1001 ", "A 1001", "1001"], ids=repr
)
async def test_a_rejected_webhook_events_receipt_is_found_by_order_id_of_the_event(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order_id: Any
) -> None:
    """The receipt of a webhook event rejected at ingest (no wire payload) is keyed by the
    order id :func:`capirelay.orders.order_id_of` reads from the mapped event, the reading
    the ledger uses: a number as its text, surrounding blanks not part of it."""
    mapping = tmp_path / "raw.toml"
    mapping.write_text(RAW_ORDER_MAPPING, encoding="utf-8")
    monkeypatch.setenv(secret_env("raw"), SECRETS["crm"])
    hook = WebhookSettings(
        preset="mapping", pixel_id=PIXEL_ID, secret=Secret(env=secret_env("raw")), mapping=mapping
    )
    raw_settings = gateway_settings(tmp_path / "raw.db", settings.graph_url, webhooks={"raw": hook})
    outbox = SQLiteOutbox(tmp_path / "raw.db")
    await outbox.open()
    event_id = f"raw:{unique_id()}:Purchase"
    # Ten days old: refused at ingest, so only the mapped event names the order.
    payload = {
        "id": event_id.split(":")[1],
        "time": int(time.time() - 10 * DAY),
        "order_id": order_id,
    }
    try:
        async with idle_gateway(raw_settings, outbox) as http:
            body = json.dumps(payload).encode()
            headers = SIGNERS["mapping"](body, SECRETS["crm"], time.time(), "")
            response = await http.post("/v1/webhooks/raw", content=body, headers=headers)
        [result] = response.json()["results"]
        assert (result["event_id"], result["status"]) == (event_id, "rejected"), result
        mapped = {"custom_data": {"order_id": order_id}}
        reading = order_id_of(mapped)
        assert reading == str(order_id).strip()
        assert await outbox.event_ids_for_order(reading) == [event_id]
    finally:
        await outbox.close()


async def test_an_order_delivered_then_resent_past_metas_window_is_told_as_delivered(
    settings: Settings, tmp_path: Path
) -> None:
    # The order went to Meta when it was paid, 8 days ago; Shopify sends it again today
    # (resent from its dashboard) and ingest refuses it as too old.  The story told the
    # user to "fix the cause, then resend the order", which was already delivered.
    outbox = SQLiteOutbox(tmp_path / "resent.db")
    await outbox.open()
    paid = time.time() - 8 * DAY
    paid_iso = datetime.fromtimestamp(paid, UTC).isoformat(timespec="seconds")
    order = shopify_order(created_at=paid_iso, processed_at=paid_iso, updated_at=paid_iso)
    event_id = f"shopify:{order['id']}:Purchase"
    wire = {"event_name": "Purchase", "event_id": event_id, "event_time": int(paid)}
    queued = NewEvent(
        PIXEL_ID, "Purchase", event_id, orjson.dumps(wire), int(paid), paid + 7 * DAY,
        source="webhook:shop",
    )  # fmt: skip
    await outbox.enqueue([queued], now=paid)
    [leased] = await outbox.lease(PIXEL_ID, limit=1, lease_seconds=30, now=paid)
    answer = MetaAnswer(fbtrace_id="Fpaid", events_received=1, sent_at=paid + 1)
    await outbox.ack_delivered([leased.id], now=paid + 2, answer=answer, lease_id=leased.lease_id)
    try:
        async with idle_gateway(settings, outbox) as http:
            body = json.dumps(order).encode()
            headers = SIGNERS["shopify"](body, SECRETS["shop"], time.time(), "orders/paid")
            response = await http.post("/v1/webhooks/shop", content=body, headers=headers)
            [result] = response.json()["results"]
            assert (result["event_id"], result["status"]) == (event_id, "rejected")
            api = await http.get(
                f"/v1/events/{event_id}",
                params={"pixel_id": PIXEL_ID},
                headers={"Authorization": f"Bearer {INGEST_KEY}"},
            )
        record = await outbox.trace(event_id, pixel_id=PIXEL_ID)
    finally:
        await outbox.close()

    assert status_of(record) == "delivered"
    [step] = [s for s in story(record) if s.what == "rejected"]
    assert "resend the order" not in step.detail
    assert "event_too_old" in step.detail
    assert f"the order was already delivered to Meta at {iso(paid + 1)}" in step.detail
    assert "nothing to do" in step.detail
    assert api.status_code == 200
    assert [s["detail"] for s in api.json()["story"] if s["what"] == "rejected"] == [step.detail]


def filler_events(size: int, padding: int) -> list[dict[str, Any]]:
    now = int(time.time())
    return [
        {
            "event_name": "Purchase",
            "event_time": now,
            "event_id": f"fill-{unique_id()}",
            "action_source": "website",
            "event_source_url": "https://shop.example/",
            "user_data": {"external_id": str(unique_id()), "client_user_agent": "x" * padding},
            "custom_data": {"value": 1, "currency": "EUR"},
        }
        for _ in range(size)
    ]


def test_an_unknown_preset_is_refused_with_the_settings() -> None:
    with pytest.raises(ValidationError, match="unknown webhook preset 'magento'"):
        WebhookSettings(preset="magento", pixel_id=PIXEL_ID, secret="s")


@pytest.mark.parametrize(
    ("hook", "words"),
    [
        ({"pixel_id": "999"}, "pixel_id 999 is not configured"),
        ({"preset": "mapping"}, "needs mapping ="),
        ({"mapping": "broken"}, "broken.toml:2: event[0].topic"),
        ({"mapping": "missing"}, "cannot read the mapping file"),
    ],
)
def test_webhook_configuration_errors_stop_the_gateway_at_start(
    settings: Settings, tmp_path: Path, hook: dict[str, Any], words: str
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[[event]]\ntopic = 1\n[event.set]\nevent_name = "A"\n', encoding="utf-8")
    values: dict[str, Any] = {"preset": "shopify", "pixel_id": PIXEL_ID, "secret": "s"}
    values.update(hook)
    if values.get("mapping") in ("broken", "missing"):
        values["mapping"] = tmp_path / f"{values['mapping']}.toml"
    bad = settings.model_copy(update={"webhooks": {"bad": WebhookSettings(**values)}})
    with pytest.raises(ConfigError) as caught:
        load_webhooks(bad)
    assert "webhooks.bad:" in str(caught.value)
    assert words in str(caught.value)
    with pytest.raises(ConfigError):
        create_app(bad)


def test_a_signed_order_with_a_lone_surrogate_is_answered_200_naming_the_field(
    client: httpx.Client,
) -> None:
    # "\ud83c" without its pair (a title cut mid-emoji) made the whole body 400
    # malformed_json, which the vendor retries; it is now the event's problem.
    order = shopify_order()
    order["line_items"][0]["title"] = "Gift @@"
    body = json.dumps(order).encode().replace(b"@@", b"\\ud83c")
    headers = SIGNERS["shopify"](body, SECRETS["shop"], time.time(), "orders/paid")
    response = client.post("/v1/webhooks/shop", content=body, headers=headers)
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert result["status"] == "rejected"
    assert {(p["code"], p["field"]) for p in result["problems"]} == {
        ("invalid_value", "custom_data.contents.0.title")
    }
