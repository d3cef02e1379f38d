"""Personal data in URLs and custom_data never reaches the queue or Meta (default: strip)."""

from __future__ import annotations

import httpx
import pytest

from capirelay.emulator.testing import RunningEmulator

from .conftest import PIXEL_ID, SHOP_ORIGIN
from .test_gateway import post_events, server_event, wait_delivered

BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


def pii_count(client: httpx.Client, action: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if (
            line.startswith("capirelay_pii_found_total{")
            and f'action="{action}"' in line
            and f'pixel="{PIXEL_ID}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_email_in_the_url_and_custom_data_is_removed_before_storage(
    client: httpx.Client, emulator: RunningEmulator, uid: str
) -> None:
    before = pii_count(client, "removed")
    leaky = server_event(
        event_id=f"{uid}leaky",
        event_source_url="https://shop.example/thanks?email=jane%40example.com&step=2",
        custom_data={"value": 5.0, "currency": "EUR", "customer_email": "jane@example.com"},
    )
    response = post_events(client, [leaky])
    assert response.status_code == 202, response.text
    [result] = response.json()["results"]
    assert result["status"] == "queued"
    removed = {p["field"] for p in result["problems"] if p["code"] == "pii_removed"}
    assert removed == {"event_source_url", "custom_data.customer_email"}
    [sent] = wait_delivered(emulator, f"{uid}leaky", 1)
    assert sent["event"]["event_source_url"] == "https://shop.example/thanks?step=2"
    assert "customer_email" not in sent["event"]["custom_data"]
    assert pii_count(client, "removed") == before + 2


def test_the_beacon_page_url_loses_its_email_parameter(
    gateway_url: str, emulator: RunningEmulator, uid: str
) -> None:
    beacon = {
        "pixel_id": PIXEL_ID,
        "event_name": "PageView",
        "event_id": f"{uid}page",
        "page_url": "https://shop.example/welcome?e=jane%40example.com&fbclid=IwAR1abc",
    }
    headers = {"Origin": SHOP_ORIGIN, "User-Agent": BROWSER_UA}
    response = httpx.post(f"{gateway_url}/v1/collect", json=beacon, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    [sent] = wait_delivered(emulator, f"{uid}page", 1)
    assert "jane" not in sent["event"]["event_source_url"]
    assert "fbclid=IwAR1abc" in sent["event"]["event_source_url"]


@pytest.mark.parametrize("field", ["event_source_url", "referrer_url"])
def test_a_url_with_a_malformed_host_still_loses_its_email_and_the_batch_goes(
    client: httpx.Client, emulator: RunningEmulator, uid: str, field: str
) -> None:
    # urlsplit raises ValueError on "[::1" (an unclosed IPv6 bracket): no 500, no lost batch.
    leaky = server_event(
        event_id=f"{uid}leaky", **{field: "http://[::1/thanks?email=jane%40example.com&step=2"}
    )
    response = post_events(client, [leaky, server_event(event_id=f"{uid}fine")])
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["queued", "queued"]
    assert {(p["code"], p["field"]) for p in results[0]["problems"]} == {("pii_removed", field)}
    assert "jane" not in response.text
    [sent] = wait_delivered(emulator, f"{uid}leaky", 1)
    assert sent["event"][field] == "http://[::1/thanks?step=2"
