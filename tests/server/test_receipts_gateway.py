"""Receipts end to end, on both backends: an event's story after it reached a final state, from
``GET /v1/events/{event_id}``, ``capirelay trace`` and the dashboard's search box."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from capirelay.cli import app as cli_app
from capirelay.config import Settings
from capirelay.emulator.testing import RunningEmulator
from capirelay.outbox import SQLiteOutbox
from capirelay.outbox.postgres import PostgresOutbox
from waiting import wait_for

from .conftest import INGEST_KEY, LIMITED_KEY, PIXEL_ID, gateway_settings

RAW_EMAIL = "Receipt.Person@Example.com"
ADMIN_TOKEN = "dashboard-admin-token-for-receipts"


@pytest.fixture(scope="module")
def settings(
    db_path: Path,
    storage_url: str,
    emulator: RunningEmulator,
    secrets_in_env: pytest.MonkeyPatch,
) -> Settings:
    secrets_in_env.chdir(db_path.parent)
    secrets_in_env.setenv("CAPIRELAY_TEST_RECEIPTS_ADMIN", ADMIN_TOKEN)
    return gateway_settings(
        storage_url,
        emulator.url,
        dashboard={"admin_token": {"env": "CAPIRELAY_TEST_RECEIPTS_ADMIN"}},
    )


@pytest.fixture
def fresh_emulator(emulator: RunningEmulator) -> Iterator[RunningEmulator]:
    yield emulator
    httpx.delete(f"{emulator.url}/_emulator/faults").raise_for_status()


def event(event_id: str, **custom: Any) -> dict[str, Any]:
    return {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 60,
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "email": RAW_EMAIL,
            "client_ip_address": "8.8.4.4",
            "client_user_agent": "Mozilla/5.0 (test)",
        },
        "custom_data": {"value": 12.5, "currency": "EUR", **custom},
    }


def trace(client: httpx.Client, event_id: str, key: str = INGEST_KEY) -> httpx.Response:
    return client.get(
        f"/v1/events/{event_id}",
        params={"pixel_id": PIXEL_ID},
        headers={"Authorization": f"Bearer {key}"},
    )


def wait_status(client: httpx.Client, event_id: str, status: str) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        response = trace(client, event_id)
        body = response.json() if response.status_code == 200 else None
        return body if body and body["status"] == status else None

    found: dict[str, Any] = wait_for(reached)
    return found


def test_a_delivered_event_has_a_receipt_with_metas_answer(
    client: httpx.Client, uid: str, storage_url: str
) -> None:
    event_id = f"{uid}order-1001"
    response = client.post(
        "/v1/events", json={"pixel_id": PIXEL_ID, "data": [event(event_id, order_id="1001")]}
    )
    assert response.status_code == 202

    body = wait_status(client, event_id, "delivered")
    [receipt] = body["receipts"]
    assert receipt["outcome"] == "delivered" and receipt["source"] == "backend"
    assert receipt["fbtrace_id"] and receipt["events_received"] >= 1
    assert receipt["attempts"] == 1
    assert receipt["received_at"] <= receipt["last_attempt_at"]
    steps = [step["what"] for step in body["story"]]
    assert steps == ["received", "delivered"]
    assert body["story"][-1]["fbtrace_id"] == receipt["fbtrace_id"]
    assert "receipt.person" not in response.text.lower() + str(body).lower()

    # The CLI tells the same story from the same storage, while the gateway runs on it.
    result = CliRunner().invoke(cli_app, ["trace", event_id, "--storage", storage_url, "--json"])
    assert result.exit_code == 0, result.output
    cli_body = orjson.loads(result.stdout)
    assert cli_body["status"] == "delivered"
    assert cli_body["receipts"][0]["fbtrace_id"] == receipt["fbtrace_id"]
    table = CliRunner().invoke(cli_app, ["trace", event_id, "--storage", storage_url])
    assert table.exit_code == 0 and "delivered" in table.output

    by_order = CliRunner().invoke(
        cli_app, ["trace", "1001", "--order", "--storage", storage_url, "--json"]
    )
    assert by_order.exit_code == 0, by_order.output
    assert event_id in [item["event_id"] for item in orjson.loads(by_order.stdout)]


def test_unknown_events_exit_1_and_answer_404(
    client: httpx.Client, uid: str, storage_url: str
) -> None:
    result = CliRunner().invoke(cli_app, ["trace", f"{uid}never", "--storage", storage_url])
    assert result.exit_code == 1
    assert "No event with event_id" in result.output
    response = trace(client, f"{uid}never")
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_event"


def test_duplicates_are_receipted_once_per_key(client: httpx.Client, uid: str) -> None:
    event_id = f"{uid}dup"
    for _ in range(3):
        client.post("/v1/events", json={"pixel_id": PIXEL_ID, "data": [event(event_id)]})

    body = wait_status(client, event_id, "delivered")
    duplicates = [r for r in body["receipts"] if r["outcome"] == "duplicate"]
    assert len(duplicates) == 1 and duplicates[0]["count"] == 2
    assert "duplicate" in [step["what"] for step in body["story"]]


def test_a_dead_lettered_event_shows_metas_refusal(
    client: httpx.Client, fresh_emulator: RunningEmulator, uid: str, storage_url: str
) -> None:
    bad = f"{uid}refused"
    httpx.post(
        f"{fresh_emulator.url}/_emulator/faults",
        json={"faults": [{"kind": "invalid_event", "event_id": bad, "subcode": 2804050}]},
    ).raise_for_status()
    client.post("/v1/events", json={"pixel_id": PIXEL_ID, "data": [event(bad)]})

    body = wait_status(client, bad, "dead_lettered")
    [receipt] = [r for r in body["receipts"] if r["outcome"] == "dead_lettered"]
    assert receipt["reason"] == "invalid"
    assert receipt["problems"][0]["code"] == 100
    assert receipt["problems"][0]["subcode"] == 2804050
    assert body["pending"][0]["where"] == "dead_letters"
    result = CliRunner().invoke(cli_app, ["trace", bad, "--storage", storage_url])
    assert result.exit_code == 1 and "dead_lettered" in result.output


def post_unconsented_beacon(
    gateway_url: str, event_id: str, user_data: dict[str, Any] | None = None
) -> httpx.Response:
    """A browser's beacon without consent: the gateway drops it and keeps its receipt."""
    beacon: dict[str, Any] = {
        "pixel_id": PIXEL_ID,
        "event_name": "PageView",
        "event_id": event_id,
        "consent": False,
    }
    if user_data is not None:
        beacon["user_data"] = user_data
    with httpx.Client(base_url=gateway_url) as http:
        return http.post(
            "/v1/collect",
            json=beacon,
            headers={"User-Agent": "Mozilla/5.0 (test)", "Origin": "https://shop.example"},
        )


def test_dropped_beacons_are_receipted_without_identifiers(
    gateway_url: str, client: httpx.Client, uid: str
) -> None:
    event_id = f"{uid}no-consent"
    response = post_unconsented_beacon(gateway_url, event_id, {"email": RAW_EMAIL})
    assert response.json()["status"] == "dropped"

    body = wait_status(client, event_id, "dropped")
    [receipt] = body["receipts"]
    assert receipt["source"] == "collect" and receipt["reason"] == response.json()["reason"]


@pytest.mark.parametrize(
    ("event_id", "why"),
    [("drop\x00ped", "a NUL, which PostgreSQL text refuses"), ("x" * 3_000, "3,000 chars")],
    ids=["nul", "long"],
)
def test_a_dropped_beacon_with_a_hostile_id_keeps_and_echoes_nothing(
    gateway_url: str, client: httpx.Client, uid: str, event_id: str, why: str
) -> None:
    # Dropped beacons skip prepare_event and its limits: the id was stored as sent (a 500
    # on PostgreSQL, receipts of any size on both) and echoed back.
    response = post_unconsented_beacon(gateway_url, f"{uid}{event_id}")
    assert response.status_code == 202, (why, response.text)
    assert response.json()["status"] == "dropped" and response.json()["event_id"] == ""
    assert client.get("/readyz").status_code == 200
    # Nothing was kept under any prefix of it either.
    assert trace(client, uid).status_code == 404


def test_keys_read_only_their_pixels_and_requests_are_checked(
    client: httpx.Client, uid: str
) -> None:
    assert trace(client, f"{uid}x", key=LIMITED_KEY).status_code == 403
    assert trace(client, f"{uid}x", key="wrong-key").status_code == 401
    missing = client.get(f"/v1/events/{uid}x")
    assert missing.status_code == 422 and "pixel_id" in missing.json()["error"]["message"]


def test_an_event_id_holding_nul_is_not_found_on_either_backend(
    client: httpx.Client, gateway_url: str, uid: str
) -> None:
    # A 500 on PostgreSQL (psycopg's DataError: text cannot hold NUL), 404 on SQLite.
    response = client.get(f"/v1/events/{uid}a%00b", params={"pixel_id": PIXEL_ID})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_event"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=gateway_url, headers=auth) as http:
        page = http.get("/ui/search", params={"q": f"{uid}a\x00b"})
    assert page.status_code == 200
    assert 'id="search-none"' in page.text


def test_a_failure_logs_the_path_escaped_as_the_access_line_does(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The error line wrote the decoded path as it came: a NUL byte, a carriage return and
    # a terminal's erase-line sequence that hide what came before on a terminal.  (A line
    # break matches no route: the path convertor stops at it.)
    async def broken(self: Any, event_id: str, *, pixel_id: str | None = None) -> Any:
        raise RuntimeError("what storage said")

    monkeypatch.setattr(SQLiteOutbox, "trace", broken)
    monkeypatch.setattr(PostgresOutbox, "trace", broken)
    caplog.set_level(logging.INFO)
    response = trace(client, "a%00b%0d%1b[2Kforged")
    assert response.status_code == 500
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unhandled")]
    assert line == "unhandled RuntimeError on GET /v1/events/a\\x00b\\r\\x1b[2Kforged"
    [access] = [r.getMessage() for r in caplog.records if r.name == "capirelay.access"]
    assert access.startswith("GET /v1/events/a\\x00b\\r\\x1b[2Kforged ")
    assert access.rsplit(" ", 2)[1] == "500"  # it said 0: the 500 was answered outside it


def test_the_dashboard_search_box_finds_events_and_orders(
    client: httpx.Client, gateway_url: str, uid: str
) -> None:
    event_id = f"{uid}dash"
    client.post(
        "/v1/events", json={"pixel_id": PIXEL_ID, "data": [event(event_id, order_id=f"{uid}A7")]}
    )
    delivered = wait_status(client, event_id, "delivered")
    fbtrace = delivered["receipts"][0]["fbtrace_id"]

    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=gateway_url, headers=auth) as http:
        page = http.get("/ui/search", params={"q": event_id})
        by_order = http.get("/ui/search", params={"q": f"{uid}A7"})
        nothing = http.get("/ui/search", params={"q": f"{uid}none"})
        home = http.get("/ui/")
    assert page.status_code == 200
    assert 'data-status="delivered"' in page.text and fbtrace in page.text
    assert f'data-event-id="{event_id}"' in by_order.text and "found by order id" in by_order.text
    assert 'id="search-none"' in nothing.text
    assert 'action="/ui/search"' in home.text
