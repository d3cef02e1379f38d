"""A sale reaches Meta once per order, days apart too: the order ledger through the gateway.

WooCommerce's documented order (``tests/fixtures/vendors/woocommerce_rest_v3_order_727.json``)
arrives signed as ``order.updated`` when it is paid (``processing``), and again days later
when it is ``completed``.  Between the two, its 48 h dedup row is aged past the window (and
expired), as if the days had passed; the second delivery must still answer ``duplicate``
and Meta (the emulator) must hold one Purchase.  Runs on both storage backends.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from capirelay.config import Secret, Settings, WebhookSettings
from capirelay.emulator.testing import RunningEmulator, run_emulator
from capirelay.outbox.postgres import postgres_conninfo
from capirelay.server import create_app
from server.conftest import INGEST_KEY, PIXEL_ID, gateway_settings, serve_in_thread
from vendor_data import vendor_fixture
from waiting import wait_for

from .test_webhooks_gateway import unique_id
from .webhook_data import SIGNERS

ACCESS_TOKEN = "ledger-test-access-token"
TOKEN_ENV = "CAPIRELAY_TEST_ACCESS_TOKEN"
INGEST_KEY_ENV = "CAPIRELAY_TEST_INGEST_KEY"
WOO_SECRET = "wc_ledger_secret_0123"
WOO_SECRET_ENV = "CAPIRELAY_TEST_WEBHOOK_LEDGER_WOO"
DAYS = 86400


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
        yield gateway_settings(storage_url, emulator.url, webhooks=hooks)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[httpx.Client]:
    with (
        serve_in_thread(create_app(settings)) as url,
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        yield http


def _age_dedup_row(storage_url: str, event_id: str, seconds: float) -> None:
    """Move the event's dedup row ``seconds`` into the past, once its event was acked."""
    if storage_url.startswith("sqlite:///"):
        with sqlite3.connect(storage_url.removeprefix("sqlite:///"), timeout=10) as conn:
            pinned = "SELECT queued FROM dedup WHERE event_id = ?"
            wait_for(lambda: conn.execute(pinned, (event_id,)).fetchone() == (0,))
            conn.execute(
                "UPDATE dedup SET seen_at = seen_at - ? WHERE event_id = ?", (seconds, event_id)
            )
        return
    with psycopg.connect(postgres_conninfo(storage_url), autocommit=True) as pg:
        # A key is pinned while the queue row it names exists (migration 0009).
        pinned = (
            "SELECT EXISTS (SELECT 1 FROM capirelay_dedup AS d"
            " JOIN capirelay_queue AS q ON q.id = d.queue_id WHERE d.event_id = %s)"
        )
        wait_for(lambda: pg.execute(pinned, (event_id,)).fetchone() == (False,))
        pg.execute(
            "UPDATE capirelay_dedup SET seen_at = seen_at - %s WHERE event_id = %s",
            (seconds, event_id),
        )


def _received(emulator: RunningEmulator, event_id: str) -> list[dict[str, Any]]:
    return [
        e["event"] for e in emulator.state.events(PIXEL_ID) if e["event"]["event_id"] == event_id
    ]


def _woo(order_id: int, status: str, paid: float) -> dict[str, Any]:
    order: dict[str, Any] = vendor_fixture("woocommerce_rest_v3_order_727.json")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(paid))
    order.update(id=order_id, status=status, date_paid_gmt=stamp, date_created_gmt=stamp)
    return order


def _post_woo(client: httpx.Client, order: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(order).encode()
    headers = SIGNERS["woocommerce"](body, WOO_SECRET, time.time(), "order.updated")
    response = client.post("/v1/webhooks/woo", content=body, headers=headers)
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    return dict(result)


def test_woocommerce_order_completed_days_later_is_a_duplicate(
    client: httpx.Client, emulator: RunningEmulator, storage_url: str
) -> None:
    order_id = unique_id()
    event_id = f"woocommerce:{order_id}:Purchase"
    paid = time.time() - 60
    assert _post_woo(client, _woo(order_id, "processing", paid))["status"] == "queued"
    wait_for(lambda: _received(emulator, event_id))
    _age_dedup_row(storage_url, event_id, 3 * DAYS)  # "completed" three days later
    completed = _post_woo(client, _woo(order_id, "completed", paid))
    assert (completed["event_id"], completed["status"]) == (event_id, "duplicate")
    # The same order sent by the shop's backend with another event id is the same sale.
    backend = client.post(
        "/v1/events",
        headers={"Authorization": f"Bearer {INGEST_KEY}"},
        json={
            "pixel_id": PIXEL_ID,
            "data": [
                {
                    "event_name": "Purchase",
                    "event_time": int(time.time()),
                    "event_id": f"backend-{order_id}",
                    "action_source": "system_generated",
                    "user_data": {"em": "john.doe@example.com"},
                    "custom_data": {"value": 54.8, "currency": "EUR", "order_id": str(order_id)},
                }
            ],
        },
    )
    assert backend.status_code == 202, backend.text
    assert backend.json()["results"][0]["status"] == "duplicate"
    assert len(_received(emulator, event_id)) == 1


def test_events_without_an_order_keep_the_48_hour_window(
    client: httpx.Client, emulator: RunningEmulator, storage_url: str
) -> None:
    event_id = f"lead-{unique_id()}"
    event = {
        "event_name": "Lead",
        "event_time": int(time.time()),
        "event_id": event_id,
        "action_source": "system_generated",
        "user_data": {"em": "lead@example.com"},
    }
    body = {"pixel_id": PIXEL_ID, "data": [event]}
    headers = {"Authorization": f"Bearer {INGEST_KEY}"}
    first = client.post("/v1/events", headers=headers, json=body)
    assert first.json()["results"][0]["status"] == "queued"
    wait_for(lambda: _received(emulator, event_id))
    _age_dedup_row(storage_url, event_id, 3 * DAYS)
    again = client.post("/v1/events", headers=headers, json=body)
    assert again.json()["results"][0]["status"] == "queued"  # no ledger row for a lead
