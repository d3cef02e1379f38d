"""The gateway end to end: HTTP in on a real socket, the emulator (as Meta) out, SQLite on disk."""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from capirelay.emulator.testing import RunningEmulator
from capirelay.server.openapi import openapi_document
from waiting import wait_for

from .conftest import (
    CONFIG_TEST_CODE,
    INGEST_KEY,
    LIMITED_KEY,
    OTHER_PIXEL_ID,
    PIXEL_ID,
    SHOP_ORIGIN,
)

RAW_EMAIL = "Jane.Doe@Example.com"
RAW_PHONE = "(650) 555-1212"
RAW_LAST_NAME = "Vandersteenhoven"
PUBLIC_IP = "8.8.4.4"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def server_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 30,
        "action_source": "website",
        "event_source_url": "https://shop.example/thank-you",
        "user_data": {
            "email": RAW_EMAIL,
            "phone": RAW_PHONE,
            "last_name": RAW_LAST_NAME,
            "client_ip_address": PUBLIC_IP,
            "client_user_agent": "Mozilla/5.0 (test)",
            "fbp": "fb.1.1700000000000.123456789",
        },
        "custom_data": {"value": 25.0, "currency": "EUR"},
    }
    event.update(overrides)
    return event


def post_events(client: httpx.Client, events: list[Any], **body: Any) -> httpx.Response:
    return client.post("/v1/events", json={"pixel_id": PIXEL_ID, "data": events, **body})


def delivered(emulator: RunningEmulator, prefix: str, pixel_id: str = PIXEL_ID) -> list[dict]:
    """What the emulator (Meta) received for this test: events whose id starts with ``prefix``."""
    return [
        stored
        for stored in emulator.state.events(pixel_id)
        if str(stored["event"].get("event_id", "")).startswith(prefix)
    ]


def wait_delivered(
    emulator: RunningEmulator, prefix: str, count: int, pixel_id: str = PIXEL_ID
) -> list[dict]:
    def enough() -> list[dict]:
        found = delivered(emulator, prefix, pixel_id)
        return found if len(found) >= count else []

    return wait_for(enough)


def flush(client: httpx.Client, emulator: RunningEmulator, uid: str) -> None:
    """Send a marker event and wait for it: what was queued before it has been sent."""
    post_events(client, [server_event(event_id=f"{uid}marker")])
    wait_delivered(emulator, f"{uid}marker", 1)


# ---------------------------------------------------------------------------
# /v1/events


def test_events_reach_meta_hashed(
    client: httpx.Client, emulator: RunningEmulator, uid: str
) -> None:
    response = post_events(client, [server_event(event_id=f"{uid}{i}") for i in range(3)])

    assert response.status_code == 202
    body = response.json()
    assert [r["status"] for r in body["results"]] == ["queued"] * 3
    assert [r["event_id"] for r in body["results"]] == [f"{uid}0", f"{uid}1", f"{uid}2"]
    assert [r["index"] for r in body["results"]] == [0, 1, 2]
    assert body["test_event_code"] is None
    stored = wait_delivered(emulator, uid, 3)
    wire = stored[0]["event"]
    assert wire["user_data"]["em"] == [sha("jane.doe@example.com")]
    assert wire["user_data"]["ph"] == [sha("16505551212")]
    assert wire["user_data"]["ln"] == [sha("vandersteenhoven")]
    assert RAW_EMAIL not in str(stored) and "555-1212" not in str(stored)
    assert sorted(e["event"]["event_id"] for e in stored) == [f"{uid}0", f"{uid}1", f"{uid}2"]


def test_duplicates_are_answered_and_sent_once(
    client: httpx.Client, emulator: RunningEmulator, uid: str
) -> None:
    event_id = f"{uid}order-7"
    duplicates_at_meta = emulator.state.stats()["duplicates"]
    first = post_events(client, [server_event(event_id=event_id), server_event(event_id=event_id)])
    again = post_events(client, [server_event(event_id=event_id)])

    assert [r["status"] for r in first.json()["results"]] == ["queued", "duplicate"]
    assert again.json()["results"][0]["status"] == "duplicate"
    flush(client, emulator, uid)
    assert len(delivered(emulator, event_id)) == 1
    assert emulator.state.stats()["duplicates"] == duplicates_at_meta, "Meta saw it once"


def test_events_without_id_get_a_stable_one(
    client: httpx.Client, emulator: RunningEmulator, uid: str
) -> None:
    # The content (here: external_id) is what makes the derived id this test's own.
    event = server_event(event_time=int(time.time()) - 100)
    event["user_data"] = {**event["user_data"], "external_id": uid}
    first = post_events(client, [event]).json()["results"][0]
    second = post_events(client, [event]).json()["results"][0]

    assert first["status"] == "queued" and second["status"] == "duplicate"
    assert first["event_id"] == second["event_id"] and first["event_id"].startswith("cr_")
    [sent] = wait_delivered(emulator, first["event_id"], 1)
    assert sent["event"]["user_data"]["external_id"] == [sha(uid)]


def test_a_rejected_event_does_not_cost_the_others(
    client: httpx.Client, emulator: RunningEmulator, uid: str
) -> None:
    bad = server_event(event_id=f"{uid}bad")
    bad["user_data"] = {**bad["user_data"], "emial": RAW_EMAIL}
    response = post_events(
        client,
        [
            server_event(event_id=f"{uid}good-1"),
            bad,
            server_event(event_id=f"{uid}old", event_time=int(time.time()) - 8 * 86400),
            server_event(event_id=f"{uid}good-2"),
        ],
    )

    assert response.status_code == 202
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["queued", "rejected", "rejected", "queued"]
    [problem] = results[1]["problems"]
    assert problem["field"] == "user_data.emial" and problem["code"] == "unknown_field"
    assert problem["severity"] == "error"
    assert RAW_EMAIL not in response.text
    assert any(p["field"] == "event_time" for p in results[2]["problems"])
    flush(client, emulator, uid)
    assert sorted(e["event"]["event_id"] for e in delivered(emulator, uid)) == [
        f"{uid}good-1",
        f"{uid}good-2",
        f"{uid}marker",
    ]


def test_warnings_are_returned_with_queued_events(client: httpx.Client, uid: str) -> None:
    event = server_event(event_id=f"{uid}warn")
    del event["user_data"]["fbp"]
    [result] = post_events(client, [event]).json()["results"]
    assert result["status"] == "queued"
    assert result["problems"] and {p["severity"] for p in result["problems"]} == {"warning"}


def test_values_dropped_for_one_reason_are_answered_as_one_counted_problem(
    client: httpx.Client, uid: str
) -> None:
    emails = ["not-an-email", "also bad", "nope"]
    event = server_event(event_id=f"{uid}three-em")
    event["user_data"] = {**event["user_data"], "email": emails, "phone": ["call me", "x"]}
    response = post_events(client, [event])
    [result] = response.json()["results"]
    assert result["status"] == "queued"
    dropped = [p for p in result["problems"] if p["code"].startswith("invalid_")]
    assert [(p["code"], p["field"], p.get("count")) for p in dropped] == [
        ("invalid_email", "user_data.em", 3),
        ("invalid_phone", "user_data.ph", 2),
    ]
    assert dropped[0]["message"].startswith("3 values of user_data.em could not be normalized")
    assert dropped[0]["severity"] == "warning"
    # A problem about one value keeps its four fields and no count (the schema's default).
    assert all("count" not in p for p in result["problems"] if p not in dropped)
    assert not any(value in response.text for value in [*emails, "call me"])
    schema = openapi_document()["components"]["schemas"]["Problem"]
    assert schema["properties"]["count"]["minimum"] == 2
    assert schema["required"] == ["code", "field", "severity", "message"]


def test_test_event_codes_reach_meta(
    client: httpx.Client, emulator: RunningEmulator, uid: str
) -> None:
    from_config = client.post(
        "/v1/events",
        json={"pixel_id": OTHER_PIXEL_ID, "data": [server_event(event_id=f"{uid}cfg")]},
    )
    from_header = client.post(
        "/v1/events",
        headers={"X-Test-Event-Code": "TEST_HEADER"},
        json={
            "pixel_id": OTHER_PIXEL_ID,
            "data": [server_event(event_id=f"{uid}hdr")],
            "test_event_code": "TEST_BODY",
        },
    )
    from_body = post_events(
        client, [server_event(event_id=f"{uid}body")], test_event_code="TEST_BODY"
    )

    assert from_config.json()["test_event_code"] == CONFIG_TEST_CODE
    assert from_header.json()["test_event_code"] == "TEST_HEADER"
    assert from_body.json()["test_event_code"] == "TEST_BODY"
    sent = wait_delivered(emulator, uid, 2, OTHER_PIXEL_ID) + wait_delivered(emulator, uid, 1)
    codes = {e["event"]["event_id"].removeprefix(uid): e["test_event_code"] for e in sent}
    assert codes == {"cfg": CONFIG_TEST_CODE, "hdr": "TEST_HEADER", "body": "TEST_BODY"}


# ---------------------------------------------------------------------------
# Bad input: clear 4xx, nothing else disturbed

BAD_REQUESTS = [
    # (case, headers, body bytes, status, error code)
    ("malformed json", {}, b'{"pixel_id": "1234567890", "data": [', 400, "malformed_json"),
    ("empty body", {}, b"", 400, "empty_body"),
    ("body is an array", {}, b"[]", 422, "invalid_body"),
    ("pixel_id not a string", {}, b'{"pixel_id": 1234567890, "data": [{}]}', 422, "invalid_body"),
    ("data not a list", {}, b'{"pixel_id": "1234567890", "data": {}}', 422, "invalid_body"),
    ("data empty", {}, b'{"pixel_id": "1234567890", "data": []}', 422, "invalid_body"),
    ("event not an object", {}, b'{"pixel_id": "1234567890", "data": [1]}', 422, "invalid_body"),
    (
        "unknown top-level field",
        {},
        b'{"pixel_id": "1234567890", "data": [{}], "events": []}',
        422,
        "invalid_body",
    ),
    ("unknown pixel", {}, b'{"pixel_id": "999", "data": [{}]}', 404, "unknown_pixel"),
    (
        "missing key",
        {"Authorization": ""},
        b'{"pixel_id": "1234567890", "data": [{}]}',
        401,
        "missing_key",
    ),
    ("basic auth", {"Authorization": "Basic Zm9vOmJhcg=="}, b"{}", 401, "missing_key"),
    (
        "wrong key",
        {"Authorization": "Bearer nope"},
        b'{"pixel_id": "1234567890", "data": [{}]}',
        401,
        "invalid_key",
    ),
    (
        "key not allowed for pixel",
        {"Authorization": f"Bearer {LIMITED_KEY}"},
        b'{"pixel_id": "1234567890", "data": [{}]}',
        403,
        "pixel_not_allowed",
    ),
]


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_get_clear_errors(
    client: httpx.Client,
    emulator: RunningEmulator,
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str,
) -> None:
    response = client.post(
        "/v1/events", content=body, headers={"Content-Type": "application/json", **headers}
    )

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and len(error["message"]) > 10
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert INGEST_KEY not in response.text
    # The gateway is undisturbed: a good request right after still works.
    assert post_events(client, [server_event(event_id="after")]).status_code == 202


def test_a_byte_that_is_not_utf8_is_named_by_its_offset(
    client: httpx.Client, gateway_url: str
) -> None:
    # A Latin-1 "é" in the second event of a batch was "not valid JSON (str is not valid
    # UTF-8: surrogates not allowed at 0)": no surrogate, and not at 0.
    second = server_event(event_id="latin-1")
    second["user_data"]["fn"] = "Jos\N{LATIN SMALL LETTER E WITH ACUTE}"
    body = orjson.dumps({"pixel_id": PIXEL_ID, "data": [server_event(), second]})
    body = body.replace("é".encode(), "é".encode("latin-1"))
    offset = body.index(b"\xe9")
    assert offset > 300
    response = client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "malformed_json",
        "message": f"the request body is not valid UTF-8 at byte {offset}; "
        "send JSON encoded as UTF-8",
    }
    # The beacon reads its body the same way.
    with httpx.Client(base_url=gateway_url) as http:
        beacon = http.post("/v1/collect", content=b'{"x": "\xff"}', headers=beacon_headers())
    assert beacon.json()["error"]["message"].startswith(
        "the request body is not valid UTF-8 at byte 7;"
    )
    # Valid UTF-8 that is not JSON says so, as before.
    broken = client.post("/v1/events", content=b'{"data": [1,]}')
    assert broken.json()["error"]["message"] == (
        "the request body is not valid JSON (trailing comma is not allowed at 11)"
    )


def test_more_than_1000_events_is_refused(client: httpx.Client) -> None:
    response = post_events(client, [{}] * 1001)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_events"


def test_limited_key_may_send_to_its_pixel(client: httpx.Client) -> None:
    response = client.post(
        "/v1/events",
        headers={"Authorization": f"Bearer {LIMITED_KEY}"},
        json={"pixel_id": OTHER_PIXEL_ID, "data": [server_event(event_id="lim-1")]},
    )
    assert response.status_code == 202


def _raw_request(url: str, head: bytes, body_parts: list[bytes]) -> tuple[bytes, int]:
    """Send ``head`` then body parts until the server answers; the answer and parts sent."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head)
        sent = 0
        for part in body_parts:
            try:
                sock.sendall(part)
            except OSError:
                break
            sent += 1
            sock.settimeout(0.05)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            finally:
                sock.settimeout(5)
            if answer:
                return answer + _drain(sock), sent
        return _drain(sock), sent


def _drain(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


def test_oversized_declared_body_is_refused_before_reading(
    gateway_url: str, client: httpx.Client
) -> None:
    declared = 50 * 1024 * 1024
    head = (
        "POST /v1/events HTTP/1.1\r\nHost: gw\r\n"
        f"Authorization: Bearer {INGEST_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    answer, parts_sent = _raw_request(gateway_url, head, [b"x" * 65536] * 20)

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body_too_large" in answer
    assert parts_sent < 20, "the gateway answered without waiting for the whole body"
    assert post_events(client, [server_event(event_id="after-big")]).status_code == 202


def test_oversized_chunked_body_is_cut_off_while_streaming(
    gateway_url: str, client: httpx.Client
) -> None:
    head = (
        "POST /v1/events HTTP/1.1\r\nHost: gw\r\n"
        f"Authorization: Bearer {INGEST_KEY}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    answer, parts_sent = _raw_request(gateway_url, head, [chunk] * 64)

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert parts_sent < 64
    assert post_events(client, [server_event(event_id="after-chunked")]).status_code == 202


# ---------------------------------------------------------------------------
# /v1/collect (browser beacon)


def beacon_headers(**extra: str) -> dict[str, str]:
    return {
        "Origin": SHOP_ORIGIN,
        "Host": "track.shop.example",
        "User-Agent": "Mozilla/5.0 (Macintosh) Safari/605.1.15",
        "X-Forwarded-For": PUBLIC_IP,
        **extra,
    }


def test_collect_fills_browser_ids_and_sets_cookies(
    gateway_url: str, emulator: RunningEmulator
) -> None:
    body = {
        "pixel_id": PIXEL_ID,
        "event_name": "AddToCart",
        "custom_data": {"value": 9.5, "currency": "EUR"},
        "user_data": {"email": RAW_EMAIL},
        "page_url": "https://shop.example/product/42?fbclid=IwAR0xYzCaseSensitive",
    }
    with httpx.Client(base_url=gateway_url) as http:
        response = http.post("/v1/collect", json=body, headers=beacon_headers())

    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["status"] == "queued"
    assert len(answer["event_id"]) == 36  # a UUID4 the page hands to fbq(..., {eventID})
    assert answer["fbp"].startswith("fb.1.")
    cookies = response.headers.get_list("set-cookie")
    assert any(c.startswith(f"_fbp={answer['fbp']};") and "Max-Age=7776000" in c for c in cookies)
    assert any(c.startswith("_fbc=fb.1.") and "IwAR0xYzCaseSensitive" in c for c in cookies)
    assert response.headers["access-control-allow-origin"] == SHOP_ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"

    [sent] = wait_delivered(emulator, answer["event_id"], 1)
    wire = sent["event"]
    assert wire["action_source"] == "website"
    assert wire["event_source_url"] == body["page_url"]
    user_data = wire["user_data"]
    assert user_data["client_ip_address"] == PUBLIC_IP
    assert user_data["client_user_agent"] == beacon_headers()["User-Agent"]
    assert user_data["fbp"] == answer["fbp"]
    assert (
        user_data["fbc"].endswith("IwAR0xYzCaseSensitive")
        or "IwAR0xYzCaseSensitive" in user_data["fbc"]
    )
    assert user_data["em"] == [sha("jane.doe@example.com")]


def test_collect_keeps_the_pages_event_id_and_cookie(gateway_url: str) -> None:
    existing_fbp = "fb.1.1700000000000.987654321"
    with httpx.Client(base_url=gateway_url) as http:
        http.cookies.set("_fbp", existing_fbp, domain="track.shop.example")
        response = http.post(
            "/v1/collect",
            json={
                "pixel_id": PIXEL_ID,
                "event_name": "ViewContent",
                "event_id": "page-ev-1",
                "page_url": "https://shop.example/p",
            },
            headers={**beacon_headers(), "Cookie": f"_fbp={existing_fbp}"},
        )
    assert response.json()["event_id"] == "page-ev-1"
    assert response.json()["fbp"] == existing_fbp


def test_collect_accepts_send_beacon_text_plain(gateway_url: str) -> None:
    payload = (
        b'{"pixel_id": "1234567890", "event_name": "PageView", "page_url": "https://shop.example/"}'
    )
    with httpx.Client(base_url=gateway_url) as http:
        response = http.post(
            "/v1/collect",
            content=payload,
            headers={**beacon_headers(), "Content-Type": "text/plain;charset=UTF-8"},
        )
    assert response.status_code == 202
    assert response.json()["status"] == "queued"


def test_collect_refuses_a_foreign_origin(gateway_url: str, emulator: RunningEmulator) -> None:
    with httpx.Client(base_url=gateway_url) as http:
        response = http.post(
            "/v1/collect",
            json={"pixel_id": PIXEL_ID, "event_name": "PageView"},
            headers=beacon_headers(Origin="https://evil.example"),
        )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in response.headers
    assert "set-cookie" not in response.headers


def preflight(gateway_url: str, origin: str, requested_headers: str) -> httpx.Response:
    """The browser's OPTIONS before a cross-site beacon."""
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": requested_headers,
    }
    with httpx.Client(base_url=gateway_url) as http:
        return http.options("/v1/collect", headers=headers)


@pytest.mark.parametrize(("origin", "status"), [(SHOP_ORIGIN, 204), ("https://evil.example", 403)])
def test_collect_preflight(gateway_url: str, origin: str, status: int) -> None:
    response = preflight(gateway_url, origin, "content-type")
    assert response.status_code == status
    if status == 204:
        assert response.headers["access-control-allow-origin"] == origin
        assert response.headers["access-control-allow-credentials"] == "true"
        assert "POST" in response.headers["access-control-allow-methods"]
        assert "content-type" in response.headers["access-control-allow-headers"]
    else:
        assert "access-control-allow-origin" not in response.headers


def test_collect_preflight_grants_no_header_it_was_not_built_for(gateway_url: str) -> None:
    # The requested headers were echoed back (with credentials allowed).
    response = preflight(gateway_url, SHOP_ORIGIN, "authorization, x-anything")
    assert response.status_code == 204
    assert response.headers["access-control-allow-headers"] == "content-type"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"consent": False}, "no_consent"),
        ({"consent": {"ad_storage": "denied"}}, "no_consent"),
    ],
)
def test_collect_drops_without_consent(
    gateway_url: str, extra: dict[str, Any], reason: str
) -> None:
    body = {"pixel_id": PIXEL_ID, "event_name": "PageView", **extra}
    with httpx.Client(base_url=gateway_url) as http:
        response = http.post("/v1/collect", json=body, headers=beacon_headers())
    assert response.status_code == 202
    assert response.json()["status"] == "dropped" and response.json()["reason"] == reason
    assert "set-cookie" not in response.headers


def test_collect_drops_crawlers(gateway_url: str) -> None:
    bot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    with httpx.Client(base_url=gateway_url) as http:
        response = http.post(
            "/v1/collect",
            json={"pixel_id": PIXEL_ID, "event_name": "PageView"},
            headers=beacon_headers(**{"User-Agent": bot}),
        )
    assert response.json()["status"] == "dropped" and response.json()["reason"] == "bot"


COLLECT_BAD = [
    ("malformed json", b"{nope", 400, "malformed_json"),
    ("missing event_name", b'{"pixel_id": "1234567890"}', 422, "invalid_body"),
    (
        "unknown field",
        b'{"pixel_id": "1234567890", "event_name": "X", "evil": 1}',
        422,
        "invalid_body",
    ),
    (
        "bad event_time",
        b'{"pixel_id": "1234567890", "event_name": "X", "event_time": "now"}',
        422,
        "invalid_body",
    ),
    ("unknown pixel", b'{"pixel_id": "42", "event_name": "X"}', 404, "unknown_pixel"),
    (
        "too large",
        b'{"pixel_id": "1234567890", "event_name": "' + b"x" * 5000 + b'"}',
        413,
        "body_too_large",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code"), [c[1:] for c in COLLECT_BAD], ids=[c[0] for c in COLLECT_BAD]
)
def test_collect_bad_input(gateway_url: str, body: bytes, status: int, code: str) -> None:
    with httpx.Client(base_url=gateway_url) as http:
        response = http.post("/v1/collect", content=body, headers=beacon_headers())
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    # An allowed origin can read its error.
    assert response.headers["access-control-allow-origin"] == SHOP_ORIGIN


# ---------------------------------------------------------------------------
# Health, metrics, headers, storage


def test_health_and_readiness(gateway_url: str) -> None:
    with httpx.Client(base_url=gateway_url) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "reasons": []}


def metric_value(text: str, sample: str) -> float:
    """The value of one exposition line (name plus labels exactly as rendered), 0 if absent."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_report_the_pipeline(
    client: httpx.Client, emulator: RunningEmulator, uid: str
) -> None:
    # Event names are labels; a name of its own keeps this test's counts apart.
    name = f"Probe{uid.strip('-')}"
    pixel = f'pixel="{PIXEL_ID}"'
    accepted = f'capirelay_events_accepted_total{{event_name="{name}",{pixel},source="backend"}}'
    duplicates = f'capirelay_events_duplicate_total{{event_name="{name}",{pixel}}}'
    sent = f'capirelay_events_sent_total{{event_name="{name}",{pixel}}}'
    in_future = f'capirelay_events_rejected_total{{{pixel},problem="event_in_future"}}'
    before = client.get("/metrics").text
    bad = server_event(event_id=f"{uid}bad", event_time=int(time.time()) + 7200)
    good = server_event(event_id=f"{uid}1", event_name=name)
    post_events(client, [good, good, bad])
    wait_delivered(emulator, f"{uid}1", 1)
    text = client.get("/metrics").text

    assert metric_value(text, accepted) == 1.0
    assert metric_value(text, duplicates) == 1.0
    assert metric_value(text, in_future) == metric_value(before, in_future) + 1.0
    # The engine counts "sent" once Meta's answer is in, just after Meta stored the event.
    wait_for(lambda: metric_value(client.get("/metrics").text, sent) == 1.0)
    for metric in (
        "capirelay_queue_depth",
        "capirelay_queue_oldest_age_seconds",
        "capirelay_dlq_size",
        "capirelay_graph_request_seconds",
    ):
        assert metric in text
    assert f'capirelay_queue_depth{{pixel="{OTHER_PIXEL_ID}"}} ' in text
    assert 'capirelay_dlq_size{reason="expired"} ' in text


def test_security_headers_and_no_server_banner(gateway_url: str) -> None:
    with httpx.Client(base_url=gateway_url) as http:
        responses = [http.get("/healthz"), http.get("/nope"), http.post("/v1/events")]
    for response in responses:
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "server" not in response.headers
    assert [r.status_code for r in responses] == [200, 404, 401]


# Every heap, index and TOAST file of the schema's relations, read raw (dead tuples included).
_RELATION_FILES = """
WITH rels AS (
    SELECT c.oid, c.reltoastrelid FROM pg_class AS c
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i')
)
SELECT pg_read_binary_file(pg_relation_filepath(oid))
FROM (SELECT oid FROM rels UNION SELECT reltoastrelid FROM rels WHERE reltoastrelid <> 0) AS r
WHERE pg_relation_filepath(oid) IS NOT NULL
"""


def _stored_bytes(storage_url: str, db_path: Path) -> bytes:
    """What the outbox left on disk: the SQLite files, or PostgreSQL's relation files."""
    if storage_url.startswith("sqlite"):
        files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
        assert files
        return b"".join(p.read_bytes() for p in files)
    with psycopg.connect(storage_url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # shared buffers to the files read below
        chunks = [row[0] for row in conn.execute(_RELATION_FILES).fetchall()]
    assert len(chunks) >= 3
    return b"".join(chunks)


def test_nothing_raw_reaches_the_database(
    client: httpx.Client,
    emulator: RunningEmulator,
    db_path: Path,
    storage_url: str,
    uid: str,
) -> None:
    events = [server_event(event_id=f"{uid}{i}") for i in range(20)]
    events.append(server_event(event_id=f"{uid}rejected", bogus=True))
    post_events(client, events)
    with httpx.Client(base_url=str(client.base_url)) as http:
        beacon = http.post(
            "/v1/collect",
            json={
                "pixel_id": PIXEL_ID,
                "event_name": "Lead",
                "event_id": f"{uid}beacon",
                "user_data": {"email": RAW_EMAIL, "phone": RAW_PHONE, "last_name": RAW_LAST_NAME},
            },
            headers=beacon_headers(),
        )
    assert beacon.json()["status"] == "queued"
    wait_delivered(emulator, uid, 21)

    blob = _stored_bytes(storage_url, db_path)
    assert f"{uid}beacon".encode() in blob  # the dedup key: what was stored is being read
    for raw in (
        RAW_EMAIL,
        RAW_EMAIL.lower(),
        "650) 555",
        "6505551212",
        RAW_LAST_NAME,
        RAW_LAST_NAME.lower(),
    ):
        assert raw.encode() not in blob, raw


def test_openapi_document_is_served_and_self_consistent(gateway_url: str) -> None:
    with httpx.Client(base_url=gateway_url) as http:
        document = http.get("/openapi.json").json()
    assert document == openapi_document()
    assert document["openapi"] == "3.1.0"
    assert {"/v1/events", "/v1/collect", "/healthz", "/readyz", "/metrics"} <= set(
        document["paths"]
    )
    schemas = document["components"]["schemas"]
    assert {"Event", "UserData", "CustomData", "EventsRequest", "CollectRequest"} <= set(schemas)

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(document):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref


def test_a_line_break_in_the_path_stays_on_its_access_line(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    # The path arrives percent-decoded: "%0a" started a forged line of its own in a text log.
    caplog.set_level(logging.INFO, logger="capirelay.access")
    forged = "2026-12-07 04:10:00,000 ERROR capirelay.delivery token revoked"
    client.get("/x%0a" + forged.replace(" ", "%20") + "%0d")
    [line] = [
        r.getMessage()
        for r in caplog.records
        if r.name == "capirelay.access" and "token revoked" in r.getMessage()
    ]
    assert line.startswith("GET /x\\n2026-12-07") and "\n" not in line and "\r" not in line
    assert line.rsplit(" ", 2)[1] == "404"


def test_logs_hold_no_query_strings_keys_or_identifiers(
    client: httpx.Client, emulator: RunningEmulator, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    post_events(client, [server_event(event_id=f"{uid}log")])
    client.get("/healthz", params={"email": RAW_EMAIL})
    client.post(
        "/v1/events",
        headers={"Authorization": "Bearer not-the-key"},
        json={"pixel_id": PIXEL_ID, "data": [server_event()]},
    )
    wait_delivered(emulator, f"{uid}log", 1)

    access = [r.getMessage() for r in caplog.records if r.name == "capirelay.access"]
    assert any(line.startswith("GET /healthz 200") for line in access), access
    # Everything the gateway's thread logged (the test's own client logs from MainThread).
    gateway_lines = [r.getMessage() for r in caplog.records if r.threadName != "MainThread"]
    assert any("events delivered" in line or "/v1/events" in line for line in gateway_lines)
    everything = "\n".join(gateway_lines)
    for secret in (RAW_EMAIL, RAW_EMAIL.lower(), "555-1212", INGEST_KEY, "not-the-key", "?email"):
        assert secret not in everything, secret
