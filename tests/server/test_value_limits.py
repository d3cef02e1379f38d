"""Values storage or Meta cannot take are the event's problem, on both backends alike.

Each case is one hostile event among good ones: the hostile one is ``rejected`` with a
problem naming the field (and its limit), its neighbours are queued and delivered, and
``/readyz`` stays ready (it reports storage failures, never bad data).
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from capirelay.config import PixelSettings, WebhookSettings
from capirelay.emulator.testing import RunningEmulator
from capirelay.limits import MAX_CONTENTS, MAX_EVENT_ID, MAX_TEST_EVENT_CODE

from .conftest import INGEST_KEY, PIXEL_ID, SHOP_ORIGIN
from .test_gateway import post_events, server_event, wait_delivered

BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"

# (case name, event overrides, field the problem must name, problem code)
HOSTILE: list[tuple[str, dict[str, Any], str, str]] = [
    ("3200-char event_id", {"event_id": "a" * 3200}, "event_id", "value_too_long"),
    ("NUL in event_id", {"event_id": "order\x00-1"}, "event_id", "control_character"),
    ("NUL in event_name", {"event_name": "Pur\x00chase"}, "event_name", "control_character"),
    ("3200-char event_name", {"event_name": "E" * 3200}, "event_name", "value_too_long"),
    ("51-char custom event_name", {"event_name": "C" * 51}, "event_name", "value_too_long"),
    (
        "NUL in a custom_data value",
        {"custom_data": {"value": 1.0, "currency": "EUR", "note": "a\x00b"}},
        "custom_data.note",
        "control_character",
    ),
    (
        "newline in a custom_data key",
        {"custom_data": {"value": 1.0, "currency": "EUR", "a\nb": "x"}},
        "custom_data",
        "control_character",
    ),
    (
        "5000-char event_source_url",
        {"event_source_url": "https://shop.example/?q=" + "x" * 5000},
        "event_source_url",
        "value_too_long",
    ),
    (
        "1001 contents",
        {
            "custom_data": {
                "value": 1.0,
                "currency": "EUR",
                "contents": [{"id": str(i), "quantity": 1} for i in range(MAX_CONTENTS + 1)],
            }
        },
        "custom_data.contents",
        "too_many_items",
    ),
    (
        "value beyond 10^12",
        {"custom_data": {"value": 1e13, "currency": "EUR"}},
        "custom_data.value",
        "value_out_of_range",
    ),
    (
        "70 KiB event",
        {"custom_data": {"value": 1.0, "currency": "EUR", "blob": "x" * 70_000}},
        "event",
        "event_too_large",
    ),
]


def problem_of(result: dict[str, Any], code: str) -> dict[str, Any]:
    found = [p for p in result["problems"] if p["code"] == code]
    assert found, result["problems"]
    return found[0]


def assert_ready(client: httpx.Client) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"


@pytest.mark.parametrize(
    ("case", "overrides", "field", "code"), HOSTILE, ids=[h[0] for h in HOSTILE]
)
def test_a_hostile_value_rejects_only_its_event(
    client: httpx.Client,
    emulator: RunningEmulator,
    uid: str,
    case: str,
    overrides: dict[str, Any],
    field: str,
    code: str,
) -> None:
    hostile = server_event(**{"event_id": f"{uid}bad", **overrides})
    events = [server_event(event_id=f"{uid}good-1"), hostile, server_event(event_id=f"{uid}good-2")]
    response = post_events(client, events)
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["queued", "rejected", "queued"]
    problem = problem_of(results[1], code)
    assert problem["field"] == field
    assert problem["severity"] == "error"
    assert_ready(client)
    delivered = wait_delivered(emulator, uid, 2)
    assert sorted(d["event"]["event_id"] for d in delivered) == [f"{uid}good-1", f"{uid}good-2"]


def test_one_nul_among_500_events(
    client: httpx.Client, emulator: RunningEmulator, uid: str
) -> None:
    events = [server_event(event_id=f"{uid}{i}") for i in range(500)]
    events[250]["event_id"] = f"{uid}250\x00"
    response = post_events(client, events)
    assert response.status_code == 202, response.text
    statuses = [r["status"] for r in response.json()["results"]]
    assert statuses.count("queued") == 499
    assert statuses[250] == "rejected"
    assert response.json()["results"][250]["event_id"] == ""  # never echoed
    assert_ready(client)
    wait_delivered(emulator, uid, 499)


def test_the_limits_are_the_same_for_an_event_id_just_within(
    client: httpx.Client, emulator: RunningEmulator, uid: str
) -> None:
    longest = uid + "x" * (MAX_EVENT_ID - len(uid))
    response = post_events(client, [server_event(event_id=longest)])
    assert response.json()["results"][0]["status"] == "queued"
    wait_delivered(emulator, longest, 1)


@pytest.mark.parametrize(
    ("where", "code_value", "problem_code"),
    [
        ("body", "T\x00EST", "control_character"),
        ("body", "T" * (MAX_TEST_EVENT_CODE + 1), "value_too_long"),
        ("header", "T\tEST", "control_character"),
        ("header", "T" * (MAX_TEST_EVENT_CODE + 1), "value_too_long"),
    ],
)
def test_a_bad_test_event_code_rejects_the_events_it_would_tag(
    client: httpx.Client, uid: str, where: str, code_value: str, problem_code: str
) -> None:
    events = [server_event(event_id=f"{uid}1"), server_event(event_id=f"{uid}2")]
    if where == "body":
        response = post_events(client, events, test_event_code=code_value)
    else:
        response = client.post(
            "/v1/events",
            json={"pixel_id": PIXEL_ID, "data": events},
            headers={"X-Test-Event-Code": code_value},
        )
    assert response.status_code == 202, response.text
    for result in response.json()["results"]:
        assert result["status"] == "rejected"
        assert problem_of(result, problem_code)["field"] == "test_event_code"
    assert_ready(client)


def test_the_beacon_refuses_a_3200_char_event_id_without_failing_storage(
    gateway_url: str, client: httpx.Client, uid: str
) -> None:
    beacon = {
        "pixel_id": PIXEL_ID,
        "event_name": "PageView",
        "event_id": "ab" * 1600,
        "page_url": "https://shop.example/",
    }
    with httpx.Client(base_url=gateway_url, timeout=10) as browser:
        headers = {"Origin": SHOP_ORIGIN, "User-Agent": BROWSER_UA, "Content-Type": "text/plain"}
        response = browser.post("/v1/collect", json=beacon, headers=headers)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["status"] == "rejected"
        assert problem_of(body, "value_too_long")["field"] == "event_id"
        assert body["event_id"] == ""  # the hostile id is not echoed back
        nul = {**beacon, "event_id": f"{uid}\x00"}
        response = browser.post("/v1/collect", json=nul, headers=headers)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "rejected"
        assert response.json()["event_id"] == ""
        good = {**beacon, "event_id": f"{uid}ok"}
        assert browser.post("/v1/collect", json=good, headers=headers).json()["status"] == "queued"
    assert_ready(client)


def test_rejections_are_counted_by_code(gateway_url: str, uid: str) -> None:
    with httpx.Client(
        base_url=gateway_url, headers={"Authorization": f"Bearer {INGEST_KEY}"}, timeout=10
    ) as http:
        post_events(http, [server_event(event_id=f"{uid}\x01", event_time=int(time.time()))])
        text = http.get("/metrics").text
    samples = [
        line
        for line in text.splitlines()
        if line.startswith("capirelay_events_rejected_total{")
        and 'problem="control_character"' in line
        and f'pixel="{PIXEL_ID}"' in line
    ]
    assert samples, "no rejected-by-code sample"
    assert float(samples[0].rsplit(" ", 1)[1]) >= 1


@pytest.mark.parametrize("code_value", ["TEST\x00", "T" * (MAX_TEST_EVENT_CODE + 1)])
def test_a_configured_test_event_code_over_the_limit_is_a_config_error(code_value: str) -> None:
    with pytest.raises(ValidationError, match="test_event_code"):
        PixelSettings(test_event_code=code_value)
    with pytest.raises(ValidationError, match="test_event_code"):
        WebhookSettings(preset="shopify", pixel_id=PIXEL_ID, secret="s", test_event_code=code_value)


@pytest.mark.parametrize(
    "fields",
    [
        {"user_data": {"fbp": "fb.1.1700000000000.\uff11\uff12"}},
        {"user_data": {"fbc": "fb.1.1700000000000.\u0661\u0662"}},
        {"fbclid": "fb.1.\u0661\u0662\u0663.abc"},
        {"page_url": "https://shop.example/p?fbclid=fb.1.%D9%A1%D9%A2%D9%A3.abc"},
    ],
    ids=["fbp-fullwidth", "fbc-arabic-indic", "fbclid", "fbclid-in-url"],
)
def test_unicode_digits_in_browser_ids_are_not_a_500(
    gateway_url: str, client: httpx.Client, fields: dict[str, Any]
) -> None:
    # \d matched any Unicode digit: the value passed the fbc/fbp grammar, then failed the
    # cookie's octet check (500) or went to Meta as is.
    beacon = {"pixel_id": PIXEL_ID, "event_name": "PageView", "page_url": "https://shop.example/"}
    headers = {"Origin": SHOP_ORIGIN, "User-Agent": BROWSER_UA, "Content-Type": "text/plain"}
    with httpx.Client(base_url=gateway_url, timeout=10) as browser:
        response = browser.post("/v1/collect", json={**beacon, **fields}, headers=headers)
    assert response.status_code == 202, response.text
    for cookie in response.headers.get_list("set-cookie"):
        assert cookie.isascii(), cookie
    assert response.json()["fbp"] is None or response.json()["fbp"].isascii()
    assert_ready(client)


def test_a_nul_in_external_id_is_hashed_as_the_param_builder_keeps_it(
    gateway_url: str, client: httpx.Client, uid: str
) -> None:
    # capi-param-builder keeps control characters in an external id (vector 719 of
    # tests/fixtures/reference/external-normalization-vectors.json): the browser hashes
    # them, so the server must too, and the stored payload holds only the hash.
    event = server_event(event_id=f"{uid}ext")
    event["user_data"]["external_id"] = "cust\x00-1"
    [result] = post_events(client, [event]).json()["results"]
    assert result["status"] == "queued", result
    assert not [p for p in result["problems"] if p["field"] == "user_data.external_id"]


@pytest.mark.parametrize("escape", ["\\ud83c", "\\udc00", "\\ud83c\\u0041"])
def test_a_lone_surrogate_escape_rejects_only_its_event(
    client: httpx.Client, emulator: RunningEmulator, uid: str, escape: str
) -> None:
    # JavaScript's JSON.stringify of a string cut mid-emoji writes "Gift \ud83c"; orjson
    # refuses the whole body for it ("no low surrogate in string").
    events = [server_event(event_id=f"{uid}good-{i}") for i in range(3)]
    events[1]["event_id"] = f"{uid}bad"
    events[1]["custom_data"]["title"] = "Gift @@"
    body = orjson.dumps({"pixel_id": PIXEL_ID, "data": events}).replace(b"@@", escape.encode())
    response = client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["queued", "rejected", "queued"]
    problem = problem_of(results[1], "invalid_value")
    assert problem["field"] == "custom_data.title"
    assert_ready(client)
    delivered = wait_delivered(emulator, uid, 2)
    assert sorted(d["event"]["event_id"] for d in delivered) == [f"{uid}good-0", f"{uid}good-2"]


def test_the_beacon_takes_a_lone_surrogate_as_the_events_problem(
    gateway_url: str, uid: str
) -> None:
    beacon = {
        "pixel_id": PIXEL_ID,
        "event_name": "PageView",
        "event_id": f"{uid}beacon",
        "page_url": "https://shop.example/",
        "custom_data": {"title": "Gift @@"},
    }
    body = orjson.dumps(beacon).replace(b"@@", b"\\ud83c")
    headers = {"Origin": SHOP_ORIGIN, "User-Agent": BROWSER_UA, "Content-Type": "text/plain"}
    response = httpx.post(f"{gateway_url}/v1/collect", content=body, headers=headers, timeout=10)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "rejected"
    assert problem_of(response.json(), "invalid_value")["field"] == "custom_data.title"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"a": "\\ud83c", "b": NaN}', "NaN is not a JSON number"),
        ('{"a": "\\ud83c", "b": -Infinity}', "-Infinity is not a JSON number"),
        ('{"a": "\\ud83c", "b": 1e400}', "a number is infinity"),
        ('{"a": "\\ud83c", "b": [1,]}', "Expecting value at 24"),
        ('{"a": "\\ud83c", "b": ' + "[" * 5000 + "]" * 5000 + "}", "depth limit exceeded"),
    ],
)
def test_a_body_with_a_lone_surrogate_is_otherwise_as_strict_as_any(
    client: httpx.Client, text: str, reason: str
) -> None:
    response = client.post(
        "/v1/events", content=text.encode(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "malformed_json"
    assert reason in error["message"], error["message"]


def test_a_lone_surrogate_in_the_test_event_code_rejects_the_events_not_the_server(
    client: httpx.Client, uid: str
) -> None:
    # The code is echoed in the answer, which cannot carry half a character: a 500 it was.
    events = [server_event(event_id=f"{uid}code-{i}") for i in range(2)]
    body = orjson.dumps({"pixel_id": PIXEL_ID, "data": events, "test_event_code": "T@@"})
    response = client.post(
        "/v1/events",
        content=body.replace(b"@@", b"\\ud83c"),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    answer = response.json()
    assert [r["status"] for r in answer["results"]] == ["rejected", "rejected"]
    assert problem_of(answer["results"][0], "invalid_value")["field"] == "test_event_code"
    assert answer["test_event_code"] is None


@pytest.mark.parametrize("route", ["/v1/events", "/v1/collect"])
def test_a_lone_surrogate_in_the_pixel_id_is_a_clear_refusal(gateway_url: str, route: str) -> None:
    body = (
        {"pixel_id": "12@@", "data": [server_event()]}
        if route == "/v1/events"
        else {"pixel_id": "12@@", "event_name": "PageView", "page_url": "https://shop.example/"}
    )
    headers = {"Origin": SHOP_ORIGIN, "User-Agent": BROWSER_UA, "Content-Type": "text/plain"}
    response = httpx.post(
        f"{gateway_url}{route}",
        content=orjson.dumps(body).replace(b"@@", b"\\ud83c"),
        headers=headers,
        timeout=10,
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"]
