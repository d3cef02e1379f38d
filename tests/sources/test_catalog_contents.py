"""Contents that match the catalog, from the vendors' own documented payloads, signed as the
vendors sign them, through a real gateway to the emulator.

* Shopify's sample order: 2 of its 5 line items have ``product_id: null`` (and every
  ``variant_id`` is null); they are sent under their SKU, never without ``id``.
* WooCommerce's order 727: variation 23 of product 22 is sent as 23 (Meta for WooCommerce's
  catalog id), or in any form a ``content_id`` template names.
* Stripe: a guest ``payment_intent.succeeded`` (stripe-mock's PaymentIntent: no customer,
  receipt_email or shipping) uses its metadata, and says where the identifiers are when
  there are none; the Checkout Session's ``customer_details`` carry them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from capirelay.cli import app
from capirelay.config import ConfigError, Secret, Settings, WebhookSettings
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.server import create_app
from capirelay.server.routes_webhooks import load_webhooks
from capirelay.sources.content_ids import (
    DEFAULT_TEMPLATES,
    PRESET_FIELDS,
    ContentIdTemplate,
    TemplateError,
    with_content_ids,
)
from capirelay.sources.webhooks import PRESETS
from server.conftest import INGEST_KEY, PIXEL_ID, gateway_settings, serve_in_thread
from vendor_data import vendor_fixture
from waiting import wait_for

from .test_webhooks_gateway import unique_id
from .webhook_data import SIGNERS

ACCESS_TOKEN = "catalog-test-access-token"
TOKEN_ENV = "CAPIRELAY_TEST_ACCESS_TOKEN"
INGEST_KEY_ENV = "CAPIRELAY_TEST_INGEST_KEY"
SECRET = "catalog_test_secret_0123"
SECRET_ENV = "CAPIRELAY_TEST_WEBHOOK_CATALOG"
TEST_CODE = "TEST_CATALOG_7"
HOOKS = {
    "shop": ("shopify", None),
    "shop-sku": ("shopify", "{sku}"),
    "woo": ("woocommerce", None),
    "woo-legacy": ("woocommerce", "{sku}_{id}|wc_post_id_{id}"),
    "stripe": ("stripe", None),
}


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL_ID: ACCESS_TOKEN}) as em:
        yield em


def _settings(db: Path, emulator: RunningEmulator, hooks: dict[str, WebhookSettings]) -> Settings:
    return gateway_settings(db, emulator.url, webhooks=hooks)


@pytest.fixture(scope="module")
def env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, ACCESS_TOKEN)
        patch.setenv(INGEST_KEY_ENV, INGEST_KEY)
        patch.setenv(SECRET_ENV, SECRET)
        patch.delenv("CAPIRELAY_CONFIG", raising=False)
        yield


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, emulator: RunningEmulator, env: None
) -> Iterator[httpx.Client]:
    # Shopify's sample is a test order (test: true) and stripe-mock's objects are test mode
    # (livemode: false): those webhooks send them under a test_event_code, as a shop testing
    # its setup would, instead of answering them ignored.
    hooks = {
        name: WebhookSettings(
            preset=preset,
            pixel_id=PIXEL_ID,
            secret=Secret(env=SECRET_ENV),
            content_id=template,
            test_event_code=TEST_CODE if preset in ("shopify", "stripe") else None,
        )
        for name, (preset, template) in HOOKS.items()
    }
    settings = _settings(tmp_path_factory.mktemp("catalog") / "capirelay.db", emulator, hooks)
    with (
        serve_in_thread(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        yield http


def _post(client: httpx.Client, name: str, payload: Any, topic: str = "") -> dict[str, Any]:
    preset = HOOKS[name][0]
    body = json.dumps(payload).encode()
    headers = SIGNERS[preset](body, SECRET, time.time(), topic)
    response = client.post(f"/v1/webhooks/{name}", content=body, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _delivered(emulator: RunningEmulator, event_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for stored in emulator.state.events(PIXEL_ID):
            if stored["event"]["event_id"] == event_id:
                event: dict[str, Any] = stored["event"]
                return event
        return None

    found: dict[str, Any] = wait_for(find)
    return found


def _shopify_order() -> dict[str, Any]:
    order: dict[str, Any] = vendor_fixture("shopify_documented_order.json")
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    order.update(
        id=unique_id(), financial_status="paid", cancelled_at=None, processed_at=now, created_at=now
    )
    return order


def _woo_order() -> dict[str, Any]:
    order: dict[str, Any] = vendor_fixture("woocommerce_rest_v3_order_727.json")
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    order.update(id=unique_id(), status="processing", date_paid_gmt=now, date_created_gmt=now)
    return order


# ---------------------------------------------------------------------------
# Shopify


def test_shopify_items_without_product_id_fall_back_to_sku(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    order = _shopify_order()
    [result] = _post(client, "shop", order, "orders/paid")["results"]
    assert result["status"] == "queued", result
    sent = _delivered(emulator, result["event_id"])
    product = "788032119674292922"
    ids = [product, "LENS-PROTECT-2YR", "CASE-LEATHER-PREM", product, product]
    assert [c["id"] for c in sent["custom_data"]["contents"]] == ids
    assert sent["custom_data"]["content_ids"] == ids
    assert [c["quantity"] for c in sent["custom_data"]["contents"]] == [1] * 5
    # The sample says test: true, so it went to Test events.
    [stored] = [
        stored
        for stored in emulator.state.events(PIXEL_ID, test_event_code=TEST_CODE)
        if stored["event"]["event_id"] == result["event_id"]
    ]
    assert stored["test_event_code"] == TEST_CODE


def test_shopify_content_id_template(client: httpx.Client, emulator: RunningEmulator) -> None:
    order = _shopify_order()
    [result] = _post(client, "shop-sku", order, "orders/paid")["results"]
    sent = _delivered(emulator, result["event_id"])
    skus = [item["sku"] for item in order["line_items"]]
    assert [c["id"] for c in sent["custom_data"]["contents"]] == skus


# ---------------------------------------------------------------------------
# WooCommerce


@pytest.mark.parametrize(
    ("hook", "ids"), [("woo", ["93", "23"]), ("woo-legacy", ["wc_post_id_93", "Bar3_23"])]
)
def test_woocommerce_variation_is_its_own_catalog_item(
    client: httpx.Client, emulator: RunningEmulator, hook: str, ids: list[str]
) -> None:
    [result] = _post(client, hook, _woo_order(), "order.updated")["results"]
    assert result["status"] == "queued", result
    sent = _delivered(emulator, result["event_id"])
    assert [c["id"] for c in sent["custom_data"]["contents"]] == ids
    assert sent["custom_data"]["content_ids"] == ids


def test_woocommerce_item_names_reach_meta_without_html_entities(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    # The REST API (and so the webhook) gives order 727's variation as
    # "Ship Your Idea &ndash; Color: Black, Size: M Test".
    order = _woo_order()
    assert "&ndash;" in order["line_items"][1]["name"]
    [result] = _post(client, "woo", order, "order.updated")["results"]
    sent = _delivered(emulator, result["event_id"])
    assert [c["title"] for c in sent["custom_data"]["contents"]] == [
        "Woo Single #1",
        "Ship Your Idea \u2013 Color: Black, Size: M Test",
    ]


# ---------------------------------------------------------------------------
# Stripe


def _stripe_event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    envelope: dict[str, Any] = vendor_fixture("stripe_mock_fixtures3_subset.json")["event"]
    envelope.update(id=f"evt_{uuid.uuid4().hex[:16]}", type=kind, created=int(time.time()))
    envelope["data"] = {"object": obj}
    return envelope


def _guest_payment_intent(**metadata: str) -> dict[str, Any]:
    intent: dict[str, Any] = vendor_fixture("stripe_mock_fixtures3_subset.json")["payment_intent"]
    intent.update(id=f"pi_{uuid.uuid4().hex[:16]}", status="succeeded", amount_received=1099)
    intent["metadata"] = metadata
    return intent


def test_stripe_guest_payment_intent_without_identifiers_says_where_they_are(
    client: httpx.Client,
) -> None:
    answer = _post(
        client, "stripe", _stripe_event("payment_intent.succeeded", _guest_payment_intent())
    )
    [result] = answer["results"]
    assert result["status"] == "rejected", result
    hints = [p for p in result["problems"] if p["code"] == "identifier_hint"]
    assert hints and "checkout.session.completed" in hints[0]["message"]


def test_stripe_guest_payment_intent_uses_metadata(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    intent = _guest_payment_intent(email="Guest.Buyer@Example.com", zip="94025")
    [result] = _post(client, "stripe", _stripe_event("payment_intent.succeeded", intent))["results"]
    assert result["status"] == "queued", result
    sent = _delivered(emulator, result["event_id"])
    assert len(sent["user_data"]["em"][0]) == 64  # hashed
    assert (sent["custom_data"]["value"], sent["custom_data"]["currency"]) == (10.99, "usd")


def test_stripe_payment_intent_charge_billing_details(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    # Payloads of API versions before 2022-11-15 embed the charges with billing_details.
    intent = _guest_payment_intent()
    billing = {"email": "billing@example.com", "phone": "+16505551212", "address": {}}
    intent["charges"] = {"object": "list", "data": [{"billing_details": billing}]}
    [result] = _post(client, "stripe", _stripe_event("payment_intent.succeeded", intent))["results"]
    assert result["status"] == "queued", result
    sent = _delivered(emulator, result["event_id"])
    assert {"em", "ph"} <= set(sent["user_data"])


def test_stripe_checkout_session_customer_details(
    client: httpx.Client, emulator: RunningEmulator
) -> None:
    session: dict[str, Any] = vendor_fixture("stripe_mock_fixtures3_subset.json")[
        "checkout.session"
    ]
    session.update(
        id=f"cs_{uuid.uuid4().hex[:16]}",
        payment_intent=f"pi_{uuid.uuid4().hex[:16]}",
        payment_status="paid",
        status="complete",
        # stripe-mock's session has no amount yet; a paid one always has both.
        amount_total=4900,
        currency="usd",
    )
    answer = _post(client, "stripe", _stripe_event("checkout.session.completed", session))
    [result] = answer["results"]
    assert result["status"] == "queued", result
    assert "em" in _delivered(emulator, result["event_id"])["user_data"]


# ---------------------------------------------------------------------------
# Templates


WOO = PRESET_FIELDS["woocommerce"]


@pytest.mark.parametrize(
    ("template", "item", "expected"),
    [
        ("{id}", {"product_id": 22, "variation_id": 23, "sku": "Bar3"}, "23"),
        ("{id}", {"product_id": 93, "variation_id": 0, "sku": ""}, "93"),
        (
            "{sku}_{id}|wc_post_id_{id}",
            {"product_id": 93, "variation_id": 0, "sku": ""},
            "wc_post_id_93",
        ),
        (
            "{sku}_{id}|wc_post_id_{id}",
            {"product_id": 22, "variation_id": 23, "sku": "Bar3"},
            "Bar3_23",
        ),
        ("{sku}", {"product_id": 93, "variation_id": 0, "sku": " "}, None),
        ("{product_id}-{variation_id}", {"product_id": 22, "variation_id": 23}, "22-23"),
    ],
)
def test_template_alternatives(template: str, item: dict[str, Any], expected: str | None) -> None:
    assert ContentIdTemplate.parse(template, WOO, setting="content_id").render(item) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{colour}", "unknown placeholder {colour}; use {id}, {product_id}, {variation_id}, {sku}"),
        ("sku|{id}", "'sku' has no placeholder"),
        ("{id}|", "an empty alternative"),
        ("{id}}", "unbalanced braces"),
    ],
)
def test_template_errors_name_the_fix(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match="content_id: ") as caught:
        ContentIdTemplate.parse(template, WOO, setting="content_id")
    assert message in str(caught.value)


def test_a_bad_template_stops_the_gateway_at_start(
    tmp_path: Path, emulator: RunningEmulator, env: None
) -> None:
    hooks = {
        "woo": WebhookSettings(
            preset="woocommerce", pixel_id=PIXEL_ID, secret=Secret(env=SECRET_ENV), content_id="{x}"
        ),
        "stripe": WebhookSettings(
            preset="stripe", pixel_id=PIXEL_ID, secret=Secret(env=SECRET_ENV), content_id="{id}"
        ),
    }
    with pytest.raises(ConfigError) as caught:
        load_webhooks(_settings(tmp_path / "x.db", emulator, hooks))
    text = str(caught.value)
    assert "webhooks.woo: content_id: unknown placeholder {x}" in text
    assert "webhooks.stripe: content_id: this preset has no line items" in text


def test_an_item_with_no_id_at_all_is_left_out_with_a_problem() -> None:
    template = ContentIdTemplate.parse(
        DEFAULT_TEMPLATES["shopify"], PRESET_FIELDS["shopify"], setting="content_id"
    )
    mapping = PRESETS["shopify"].default_mapping()
    assert mapping is not None
    order = _shopify_order()
    order["line_items"][1]["sku"] = ""  # a custom item: no product, no variant, no SKU
    [mapped] = with_content_ids(mapping, template).apply(
        order, now=time.time(), topic="orders/paid"
    )
    contents = mapped.event["custom_data"]["contents"]
    assert len(contents) == 4 and all(c["id"] for c in contents)
    assert "LENS-PROTECT-2YR" not in mapped.event["custom_data"]["content_ids"]
    [problem] = [p for p in mapped.problems if p.code == "content_without_id"]
    assert problem.field == "custom_data.contents[1].id"
    assert "content_id" in problem.message


# ---------------------------------------------------------------------------
# capirelay mapping test


def _mapping_test(tmp_path: Path, preset: str, payload: Any, *topic: str) -> tuple[int, str]:
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps(payload), encoding="utf-8")
    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
    result = runner.invoke(app, ["mapping", "test", preset, str(sample), *topic])
    return result.exit_code, result.stdout


def test_mapping_test_says_which_stripe_topic_carries_the_buyer(tmp_path: Path) -> None:
    code, out = _mapping_test(
        tmp_path, "stripe", _stripe_event("payment_intent.succeeded", _guest_payment_intent())
    )
    assert code == 1
    assert "hint: stripe payment_intent.succeeded: a guest PaymentIntent carries no customer" in out
    assert "checkout.session.completed" in out


def test_mapping_test_shows_the_catalog_ids_the_gateway_sends(tmp_path: Path) -> None:
    code, out = _mapping_test(tmp_path, "shopify", _shopify_order(), "--topic", "orders/paid")
    assert code == 0, out
    assert '"LENS-PROTECT-2YR"' in out and '"CASE-LEATHER-PREM"' in out
