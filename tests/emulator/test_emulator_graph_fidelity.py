"""The emulator answers like Graph beyond the events edge: the batch API through Meta's own
SDK, JSON errors for unknown paths and methods, appsecret_proof, x-fb-trace-id on every
answer, WWW-Authenticate on 190, and only the rules Meta itself enforces."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from capirelay.emulator import RunningEmulator, run_emulator
from capirelay.emulator._graph import appsecret_proof
from emulator_data import PIXEL, TOKEN, make_event

facebook_business = pytest.importorskip("facebook_business")

from facebook_business.adobjects.adspixel import AdsPixel  # noqa: E402
from facebook_business.adobjects.serverside.action_source import ActionSource  # noqa: E402
from facebook_business.adobjects.serverside.custom_data import CustomData  # noqa: E402
from facebook_business.adobjects.serverside.event import Event  # noqa: E402
from facebook_business.adobjects.serverside.event_request import EventRequest  # noqa: E402
from facebook_business.adobjects.serverside.user_data import UserData  # noqa: E402
from facebook_business.api import FacebookAdsApi, FacebookResponse  # noqa: E402
from facebook_business.exceptions import FacebookRequestError  # noqa: E402

APP_SECRET = "emulator-app-secret-for-tests"


def _sdk(url: str, **kwargs: Any) -> FacebookAdsApi:
    api = FacebookAdsApi.init(access_token=TOKEN, crash_log=False, api_version="v26.0", **kwargs)
    api._session.GRAPH = url  # the SDK's own base-URL seam
    return api


@pytest.fixture
def sdk_api(emulator: RunningEmulator) -> Iterator[FacebookAdsApi]:
    previous = FacebookAdsApi.get_default_api()
    yield _sdk(emulator.url)
    FacebookAdsApi.set_default_api(previous)


@pytest.fixture
def secret_emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL: TOKEN}, app_secret=APP_SECRET) as running:
        yield running


def sdk_event(event_id: str, **user: Any) -> Event:
    return Event(
        event_name="Purchase",
        event_time=int(time.time()) - 30,
        event_id=event_id,
        action_source=ActionSource.WEBSITE,
        event_source_url="https://shop.example/checkout",
        user_data=UserData(
            email="buyer@example.com",
            client_ip_address="203.0.113.7",
            client_user_agent="Mozilla/5.0",
            **user,
        ),
        custom_data=CustomData(currency="usd", value=12.5),
    )


# ---------------------------------------------------------------------------
# Batch


def test_sdk_batch_runs_each_request_and_reports_each_answer(
    sdk_api: FacebookAdsApi, emulator: RunningEmulator
) -> None:
    batch = sdk_api.new_batch()
    successes: list[FacebookResponse] = []
    failures: list[FacebookResponse] = []
    for pixel, event_id in ((PIXEL, "batch-1"), ("9999999999", "batch-2"), (PIXEL, "batch-3")):
        AdsPixel(pixel).create_event(
            params={
                "data": [json.dumps(sdk_event(event_id).normalize())],
                "test_event_code": "BATCH1",
            },
            batch=batch,
            success=successes.append,
            failure=failures.append,
        )
    assert batch.execute() is None  # every sub-request answered: nothing to retry
    assert [r.json()["events_received"] for r in successes] == [1, 1]
    [failure] = failures
    assert failure.status() == 400
    error = failure.json()["error"]
    assert (error["code"], error["error_subcode"]) == (100, 33)
    stored = emulator.state.events(PIXEL, test_event_code="BATCH1")
    assert [e["event"]["event_id"] for e in stored] == ["batch-1", "batch-3"]


def test_batch_limits_and_shape_errors_are_graph_errors(http: httpx.Client) -> None:
    too_many = [{"method": "GET", "relative_url": "debug_token"}] * 51
    answer = http.post("/v26.0/", data={"access_token": TOKEN, "batch": json.dumps(too_many)})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == 1
    assert "Maximum batch size is 50" in answer.json()["error"]["message"]
    missing = http.post("/v26.0/", data={"access_token": TOKEN})
    assert missing.json()["error"]["message"] == "(#100) The parameter batch is required"
    assert missing.headers["x-fb-trace-id"] == missing.json()["error"]["fbtrace_id"]


def test_batch_sub_request_with_its_own_form_body(http: httpx.Client) -> None:
    body = "data=" + json.dumps([make_event(70)])
    batch = [{"method": "POST", "relative_url": f"{PIXEL}/events", "body": body}]
    answer = http.post("/v26.0/", data={"access_token": TOKEN, "batch": json.dumps(batch)})
    assert answer.status_code == 200
    [sub] = answer.json()
    assert sub["code"] == 200
    assert json.loads(sub["body"])["events_received"] == 1
    assert any(h["name"].lower() == "x-fb-trace-id" for h in sub["headers"])


# ---------------------------------------------------------------------------
# Unknown paths and methods, trace ids, 190


def test_unknown_path_is_a_json_graph_error(http: httpx.Client) -> None:
    answer = http.get("/v26.0/nothing/here")
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert (error["code"], error["type"]) == (2500, "OAuthException")
    assert error["message"] == "Unknown path components: /v26.0/nothing/here"
    assert answer.headers["x-fb-trace-id"] == error["fbtrace_id"]


def test_unsupported_method_is_a_json_graph_error(http: httpx.Client) -> None:
    answer = http.get(f"/v26.0/{PIXEL}/events", params={"access_token": TOKEN})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["code"], error["type"]) == (100, "GraphMethodException")
    assert error["message"] == "Unsupported get request."


def test_every_answer_carries_a_trace_id(http: httpx.Client) -> None:
    ok = http.post(f"/v26.0/{PIXEL}/events", json={"access_token": TOKEN, "data": [make_event(71)]})
    assert ok.status_code == 200
    assert ok.headers["x-fb-trace-id"] == ok.json()["fbtrace_id"]
    debug = http.get("/v26.0/debug_token", params={"access_token": TOKEN, "input_token": TOKEN})
    assert debug.headers["x-fb-trace-id"]
    inspect = http.get("/_emulator/stats")
    assert inspect.headers["x-fb-trace-id"]


def test_invalid_token_carries_www_authenticate(http: httpx.Client) -> None:
    answer = http.post(
        f"/v26.0/{PIXEL}/events", json={"access_token": "not-a-token", "data": [make_event(72)]}
    )
    assert answer.json()["error"]["code"] == 190
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('OAuth "Facebook Platform" "invalid_token" "Invalid OAuth')


# ---------------------------------------------------------------------------
# appsecret_proof


def test_sdk_with_the_right_app_secret_is_accepted(secret_emulator: RunningEmulator) -> None:
    previous = FacebookAdsApi.get_default_api()
    try:
        _sdk(secret_emulator.url, app_secret=APP_SECRET)  # the SDK's default api from here
        request = EventRequest(pixel_id=PIXEL, events=[sdk_event("proof-1")])
        assert request.execute().events_received == 1
        _sdk(secret_emulator.url, app_secret="not-the-secret")
        with pytest.raises(FacebookRequestError) as caught:
            EventRequest(pixel_id=PIXEL, events=[sdk_event("proof-2")]).execute()
        assert caught.value.api_error_code() == 100
        assert "appsecret_proof" in caught.value.api_error_message()
    finally:
        FacebookAdsApi.set_default_api(previous)
    stored = [e["event"]["event_id"] for e in secret_emulator.state.events(PIXEL)]
    assert stored == ["proof-1"]


def test_proofs_are_checked_on_gets_and_in_batches(secret_emulator: RunningEmulator) -> None:
    good = appsecret_proof(APP_SECRET, TOKEN)
    with httpx.Client(base_url=secret_emulator.url) as http:
        params = {"access_token": TOKEN, "input_token": TOKEN}
        assert http.get("/v26.0/debug_token", params={**params, "appsecret_proof": good}).is_success
        bad = http.get("/v26.0/debug_token", params={**params, "appsecret_proof": "0" * 64})
        assert bad.json()["error"]["message"] == (
            "Invalid appsecret_proof provided in the API argument"
        )
        batch = [{"method": "GET", "relative_url": f"debug_token?input_token={TOKEN}"}]
        answer = http.post(
            "/v26.0/",
            data={"access_token": TOKEN, "appsecret_proof": "0" * 64, "batch": json.dumps(batch)},
        )
        [sub] = answer.json()
        assert sub["code"] == 400 and "appsecret_proof" in sub["body"]


# ---------------------------------------------------------------------------
# Only Meta's rules


def test_sdk_raw_external_id_is_accepted_as_graph_does(
    sdk_api: FacebookAdsApi, emulator: RunningEmulator
) -> None:
    # Meta recommends hashing external_id but accepts it raw; capirelay's gateway hashes it.
    event = sdk_event("raw-external-id").normalize()
    event["user_data"]["external_id"] = ["customer-42"]
    response = sdk_api.call(
        "POST", (PIXEL, "events"), params={"data": [json.dumps(event)], "test_event_code": "RAWEXT"}
    )
    assert response.json()["events_received"] == 1


def test_contents_without_id_are_refused(http: httpx.Client) -> None:
    event = make_event(73)
    event["custom_data"]["contents"] = [{"quantity": 1, "item_price": 5.0}]
    answer = http.post(f"/v26.0/{PIXEL}/events", json={"access_token": TOKEN, "data": [event]})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == 100
    assert "custom_data.contents[0].id is required" in error["error_user_msg"]
