"""The emulator answers POST /{version}/{pixel}/events the way Meta documents it."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import orjson
import pytest

from capirelay.emulator import RunningEmulator
from emulator_data import OTHER_PIXEL, OTHER_TOKEN, PIXEL, TOKEN, make_event

EVENTS_PATH = f"/v26.0/{PIXEL}/events"


def graph_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["fbtrace_id"]
    return body["error"]


# -- accepted encodings ----------------------------------------------------------------


def test_json_body_with_objects(http: httpx.Client) -> None:
    response = http.post(EVENTS_PATH, json={"data": [make_event(1)], "access_token": TOKEN})
    assert response.status_code == 200
    body = response.json()
    assert body["events_received"] == 1
    assert body["messages"] == []
    assert body["fbtrace_id"]


def test_urlencoded_body_with_json_strings_like_the_sdk_sync_path(http: httpx.Client) -> None:
    data = json.dumps([json.dumps(make_event(1)), json.dumps(make_event(2))])
    response = http.post(
        EVENTS_PATH,
        params={"access_token": TOKEN},
        data={"data": data, "test_event_code": "TEST123"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["events_received"] == 2


def test_multipart_body_like_the_curl_example(http: httpx.Client) -> None:
    files = {
        "data": (None, json.dumps([make_event(1)])),
        "access_token": (None, TOKEN),
    }
    response = http.post(EVENTS_PATH, files=files)
    assert response.status_code == 200, response.text
    assert response.json()["events_received"] == 1


@pytest.mark.parametrize("scheme", ["OAuth", "Bearer"])
def test_token_in_authorization_header(http: httpx.Client, scheme: str) -> None:
    response = http.post(
        EVENTS_PATH, json={"data": [make_event()]}, headers={"Authorization": f"{scheme} {TOKEN}"}
    )
    assert response.status_code == 200


# -- Graph's errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "subcode"),
    [
        (EVENTS_PATH, {"data": [make_event()], "access_token": "garbage"}, 400, 190, None),
        (EVENTS_PATH, {"data": [make_event()]}, 400, 104, None),
        ("/v26.0/999/events", {"data": [make_event()], "access_token": TOKEN}, 400, 100, 33),
        (
            f"/v26.0/{OTHER_PIXEL}/events",
            {"data": [make_event()], "access_token": TOKEN},
            400,
            100,
            33,
        ),
        (
            f"/v15.0/{PIXEL}/events",
            {"data": [make_event()], "access_token": TOKEN},
            400,
            2635,
            None,
        ),
        (
            f"/v20.0/{PIXEL}/events",
            {"data": [make_event()], "access_token": TOKEN},
            400,
            2635,
            None,
        ),
        (
            f"/banana/{PIXEL}/events",
            {"data": [make_event()], "access_token": TOKEN},
            400,
            2500,
            None,
        ),
        (EVENTS_PATH, {"access_token": TOKEN}, 400, 100, None),
        (EVENTS_PATH, {"data": "not json", "access_token": TOKEN}, 400, 100, None),
        (EVENTS_PATH, {"data": [1, 2], "access_token": TOKEN}, 400, 100, None),
    ],
    ids=[
        "garbage-token",
        "no-token",
        "unknown-pixel",
        "pixel-of-another-token",
        "expired-v15",
        "expired-v20",
        "nonsense-version",
        "missing-data",
        "data-not-json",
        "data-not-objects",
    ],
)
def test_graph_errors(
    http: httpx.Client,
    path: str,
    body: dict[str, Any],
    status: int,
    code: int,
    subcode: int | None,
) -> None:
    response = http.post(path, json=body)
    assert response.status_code == status
    error = graph_error(response)
    assert error["code"] == code
    assert error.get("error_subcode") == subcode
    assert error["is_transient"] is False
    assert "type" in error


def test_revoked_token_is_190_463_and_restore_brings_it_back(http: httpx.Client) -> None:
    assert http.post("/_emulator/tokens/revoke", json={"access_token": TOKEN}).status_code == 200
    error = graph_error(
        http.post(EVENTS_PATH, json={"data": [make_event()], "access_token": TOKEN})
    )
    assert (error["code"], error["error_subcode"], error["type"]) == (190, 463, "OAuthException")
    assert http.post("/_emulator/tokens/restore", json={"access_token": TOKEN}).status_code == 200
    ok = http.post(EVENTS_PATH, json={"data": [make_event()], "access_token": TOKEN})
    assert ok.status_code == 200


T0 = 1_800_000_000  # a frozen emulator clock (2027-01-15)


def assert_expired_190_463(response: httpx.Response) -> None:
    assert response.status_code == 400
    error = graph_error(response)
    assert (error["code"], error["error_subcode"], error["type"]) == (190, 463, "OAuthException")
    assert error["message"].startswith("Error validating access token: Session has expired on ")
    assert error["is_transient"] is False
    assert response.headers["www-authenticate"].startswith('OAuth "Facebook Platform"')


def test_an_expired_token_is_190_463_on_every_edge_that_takes_a_token(
    http: httpx.Client, emulator: RunningEmulator
) -> None:
    emulator.state.set_clock(T0)
    record = emulator.state.token(TOKEN)
    assert record is not None
    record.expires_at = T0 - 86400
    event = make_event(event_time=T0 - 60)
    auth = {"Authorization": f"OAuth {TOKEN}"}
    assert_expired_190_463(http.post(EVENTS_PATH, json={"data": [event], "access_token": TOKEN}))
    assert_expired_190_463(http.get(f"/v26.0/{PIXEL}", headers=auth))
    assert_expired_190_463(http.get(f"/v26.0/{PIXEL}/da_checks", headers=auth))
    assert_expired_190_463(
        http.get("/v26.0/dataset_quality", params={"dataset_id": PIXEL}, headers=auth)
    )
    # A token cannot inspect itself once expired; another token sees it expired.
    assert_expired_190_463(http.get("/debug_token", params={"input_token": TOKEN}, headers=auth))
    seen = http.get(
        "/debug_token",
        params={"input_token": TOKEN},
        headers={"Authorization": f"OAuth {OTHER_TOKEN}"},
    ).json()["data"]
    assert (seen["is_valid"], seen["expires_at"]) == (False, T0 - 86400)
    assert (seen["error"]["code"], seen["error"]["subcode"]) == (190, 463)
    assert emulator.state.stats()["events_received"] == 0
    assert emulator.state.events(PIXEL) == []


def test_token_expiry_follows_the_emulator_clock(
    http: httpx.Client, emulator: RunningEmulator
) -> None:
    record = emulator.state.token(TOKEN)
    assert record is not None
    record.expires_at = T0
    body = {"data": [make_event(event_time=T0 - 60)], "access_token": TOKEN}
    emulator.state.set_clock(T0 - 1)
    assert http.post(EVENTS_PATH, json=body).status_code == 200
    seen = http.get(
        "/debug_token", params={"input_token": TOKEN}, headers={"Authorization": f"OAuth {TOKEN}"}
    ).json()["data"]
    assert (seen["is_valid"], seen["expires_at"]) == (True, T0)
    emulator.state.set_clock(T0)
    assert_expired_190_463(http.post(EVENTS_PATH, json=body))


def test_token_expiry_is_set_and_lifted_through_the_emulator_api(
    http: httpx.Client, emulator: RunningEmulator
) -> None:
    http.post("/_emulator/clock", json={"now": T0})
    body = {"data": [make_event(event_time=T0 - 60)], "access_token": TOKEN}
    route = "/_emulator/tokens/expiry"

    in_an_hour = http.post(route, json={"access_token": TOKEN, "expires_in": 3600})
    assert in_an_hour.json() == {"expires_at": T0 + 3600, "expired": False}
    assert http.post(EVENTS_PATH, json=body).status_code == 200
    http.post("/_emulator/clock", json={"now": T0 + 3600})
    body = {"data": [make_event(event_time=T0 + 3540)], "access_token": TOKEN}
    assert_expired_190_463(http.post(EVENTS_PATH, json=body))

    never = http.post(route, json={"access_token": TOKEN, "expires_at": 0})
    assert never.json() == {"expires_at": 0, "expired": False}
    assert http.post(EVENTS_PATH, json=body).status_code == 200

    past = http.post(route, json={"access_token": TOKEN, "expires_at": T0})
    assert past.json() == {"expires_at": T0, "expired": True}
    assert_expired_190_463(http.post(EVENTS_PATH, json=body))
    assert http.post("/_emulator/reset").status_code == 200
    assert_expired_190_463(http.post(EVENTS_PATH, json=body))  # reset keeps it, like scopes

    assert http.post(route, json={"access_token": "nope", "expires_at": 0}).status_code == 404
    for bad in (
        {"access_token": TOKEN},
        {"access_token": TOKEN, "expires_at": 1, "expires_in": 1},
        {"access_token": TOKEN, "expires_at": "tomorrow"},
        {"access_token": TOKEN, "expires_at": -5},
        {"access_token": TOKEN, "expires_in": True},
        {"expires_at": 0},
    ):
        assert http.post(route, json=bad).status_code == 400, bad
    assert TOKEN not in str(emulator.state.request_log())


def narrow_scopes(http: httpx.Client, token: str, scopes: list[str]) -> None:
    answer = http.post("/_emulator/tokens/scopes", json={"access_token": token, "scopes": scopes})
    assert answer.status_code == 200, answer.text


def test_events_from_a_token_without_ads_management_are_refused_with_200(
    http: httpx.Client, emulator: RunningEmulator
) -> None:
    narrow_scopes(http, TOKEN, ["ads_read"])
    response = http.post(EVENTS_PATH, json={"data": [make_event()], "access_token": TOKEN})
    assert response.status_code == 403
    error = graph_error(response)
    assert (error["code"], error["type"], error["is_transient"]) == (200, "OAuthException", False)
    assert error["message"] == "(#200) Permissions error"
    assert "ads_management" in error["error_user_msg"]
    assert response.headers["x-fb-trace-id"] == error["fbtrace_id"]
    assert emulator.state.stats()["events_received"] == 0
    assert emulator.state.stats()["errors_by_code"] == {"200": 1}
    # The same token and the same answer on the pixel node's write edge.
    write = http.post(
        f"/v26.0/{PIXEL}", json={"access_token": TOKEN, "first_party_cookie_status": "EMPTY"}
    )
    assert (write.status_code, graph_error(write)["code"]) == (403, 200)


@pytest.mark.parametrize("scopes", [["ads_management"], ["business_management", "ads_read"]])
def test_events_need_ads_management_or_business_management(
    http: httpx.Client, scopes: list[str]
) -> None:
    narrow_scopes(http, TOKEN, scopes)
    response = http.post(EVENTS_PATH, json={"data": [make_event()], "access_token": TOKEN})
    assert response.status_code == 200, response.text


def test_a_token_without_access_to_the_pixel_is_still_100_33_whatever_its_scopes(
    http: httpx.Client,
) -> None:
    narrow_scopes(http, OTHER_TOKEN, ["ads_read"])
    response = http.post(EVENTS_PATH, json={"data": [make_event()], "access_token": OTHER_TOKEN})
    error = graph_error(response)
    assert (error["code"], error["error_subcode"]) == (100, 33)


def test_more_than_1000_events_is_100(http: httpx.Client, emulator: RunningEmulator) -> None:
    events = [make_event(i) for i in range(1001)]
    error = graph_error(http.post(EVENTS_PATH, json={"data": events, "access_token": TOKEN}))
    assert error["code"] == 100
    assert "1001" in error["error_user_msg"]
    assert emulator.state.stats()["events_received"] == 0


def test_exactly_1000_events_are_accepted(http: httpx.Client) -> None:
    events = [make_event(i) for i in range(1000)]
    response = http.post(EVENTS_PATH, json={"data": events, "access_token": TOKEN})
    assert response.json()["events_received"] == 1000


def test_one_invalid_event_rejects_the_whole_request_naming_its_index(
    http: httpx.Client, emulator: RunningEmulator
) -> None:
    events = [make_event(i) for i in range(20)]
    events[17]["event_time"] = int(time.time()) - 8 * 86400
    error = graph_error(http.post(EVENTS_PATH, json={"data": events, "access_token": TOKEN}))
    assert error["code"] == 100
    assert error["error_subcode"] // 1000 == 2804
    assert error["error_user_msg"].startswith("Event 17: ")
    assert error["error_user_title"]
    assert emulator.state.stats()["events_received"] == 0
    assert emulator.state.events(PIXEL) == []


def test_validation_follows_the_emulator_clock(emulator: RunningEmulator) -> None:
    event = make_event()
    emulator.state.set_clock(event["event_time"] + 8 * 86400)
    with httpx.Client(base_url=emulator.url) as http:
        error = graph_error(http.post(EVENTS_PATH, json={"data": [event], "access_token": TOKEN}))
    assert error["error_subcode"] == 2804003


# -- what it keeps -----------------------------------------------------------------------------


def test_dedup_counts_the_duplicate_but_flags_it(
    http: httpx.Client, emulator: RunningEmulator
) -> None:
    first = http.post(EVENTS_PATH, json={"data": [make_event(1)], "access_token": TOKEN})
    again = http.post(
        EVENTS_PATH, json={"data": [make_event(1), make_event(2)], "access_token": TOKEN}
    )
    assert first.json()["events_received"] == 1
    assert again.json()["events_received"] == 2
    stats = emulator.state.stats()
    assert (stats["events_received"], stats["events_accepted"], stats["duplicates"]) == (3, 2, 1)
    flags = [e["deduplicated"] for e in emulator.state.events(PIXEL)]
    assert flags == [False, True, False]
    unique = http.get(f"/_emulator/pixels/{PIXEL}/events", params={"deduplicated": "false"})
    assert unique.json()["count"] == 2


def test_dedup_key_is_event_name_and_event_id_per_pixel(emulator: RunningEmulator) -> None:
    state = emulator.state
    state.accept(PIXEL, [make_event(1)], None)
    state.accept(PIXEL, [make_event(1, event_name="AddToCart")], None)  # other name
    state.accept(OTHER_PIXEL, [make_event(1)], None)  # other pixel
    no_id = {k: v for k, v in make_event(9).items() if k != "event_id"}
    state.accept(PIXEL, [no_id, no_id], None)  # no event_id: never deduplicated
    assert state.stats()["duplicates"] == 0


def test_dedup_window_is_48_hours_from_first_receipt(emulator: RunningEmulator) -> None:
    state = emulator.state
    start = 1_800_000_000.0
    state.set_clock(start)
    state.accept(PIXEL, [make_event(1)], None)
    state.set_clock(start + 47 * 3600)
    state.accept(PIXEL, [make_event(1)], None)
    assert state.stats()["duplicates"] == 1
    state.set_clock(start + 49 * 3600)
    state.accept(PIXEL, [make_event(1)], None)
    assert state.stats()["duplicates"] == 1
    assert state.stats()["events_accepted"] == 2


def test_inspection_filters(http: httpx.Client) -> None:
    http.post(
        EVENTS_PATH,
        json={"data": [make_event(1)], "access_token": TOKEN, "test_event_code": "TEST1"},
    )
    http.post(
        EVENTS_PATH,
        json={"data": [make_event(2, event_name="Lead"), make_event(3)], "access_token": TOKEN},
    )
    url = f"/_emulator/pixels/{PIXEL}/events"
    by_code = http.get(url, params={"test_event_code": "TEST1"}).json()["data"]
    assert [e["event"]["event_id"] for e in by_code] == ["order-1"]
    assert by_code[0]["test_event_code"] == "TEST1"
    assert by_code[0]["received_at"] > 0
    leads = http.get(url, params={"event_name": "Lead"}).json()["data"]
    assert [e["event"]["event_id"] for e in leads] == ["order-2"]
    last = http.get(url, params={"limit": "1"}).json()["data"]
    assert [e["event"]["event_id"] for e in last] == ["order-3"]
    assert http.get(url, params={"limit": "x"}).status_code == 400


def test_stats_count_requests_and_errors_by_code(http: httpx.Client) -> None:
    http.post(EVENTS_PATH, json={"data": [make_event()], "access_token": TOKEN})
    http.post(EVENTS_PATH, json={"data": [make_event()], "access_token": "nope"})
    http.post("/v26.0/42/events", json={"data": [make_event()], "access_token": TOKEN})
    stats = http.get("/_emulator/stats").json()
    assert stats["requests"] == 3
    assert stats["events_accepted"] == 1
    assert stats["errors_by_code"] == {"190": 1, "100": 1}


def test_request_log_never_holds_a_token(http: httpx.Client) -> None:
    http.post(EVENTS_PATH, json={"data": [make_event()], "access_token": TOKEN})
    http.post(
        EVENTS_PATH, params={"access_token": TOKEN}, data={"data": json.dumps([make_event()])}
    )
    http.post(
        EVENTS_PATH, json={"data": [make_event()]}, headers={"Authorization": f"OAuth {TOKEN}"}
    )
    http.get(
        "/debug_token",
        params={"input_token": OTHER_TOKEN},
        headers={"Authorization": f"OAuth {TOKEN}"},
    )
    log = http.get("/_emulator/requests").json()["data"]
    assert len(log) == 4
    assert [entry["status"] for entry in log] == [200, 200, 200, 200]
    assert [entry.get("body") for entry in log[:3]] == ["json", "form", "json"]
    dumped = orjson.dumps(log).decode()
    assert TOKEN not in dumped
    assert OTHER_TOKEN not in dumped
    assert "buyer" not in dumped and "client_ip_address" not in dumped


def test_register_pixel_and_reset(http: httpx.Client, emulator: RunningEmulator) -> None:
    assert (
        http.post("/_emulator/pixels", json={"pixel_id": "777", "access_token": "T7"}).status_code
        == 201
    )
    assert "777" in http.get("/_emulator/pixels").json()["data"]
    assert (
        http.post("/_emulator/pixels", json={"pixel_id": "abc", "access_token": "T"}).status_code
        == 400
    )
    ok = http.post("/v26.0/777/events", json={"data": [make_event()], "access_token": "T7"})
    assert ok.status_code == 200
    http.post("/_emulator/tokens/revoke", json={"access_token": "T7"})
    assert http.post("/_emulator/reset").status_code == 200
    assert emulator.state.stats()["events_received"] == 0
    assert emulator.state.stats()["requests"] == 0
    again = http.post("/v26.0/777/events", json={"data": [make_event()], "access_token": "T7"})
    assert again.status_code == 200, "reset keeps pixels and lifts revocations"


def test_clock_endpoint(http: httpx.Client) -> None:
    frozen = http.post("/_emulator/clock", json={"now": 1_800_000_000}).json()
    assert frozen["now"] == 1_800_000_000
    assert frozen["today"] == "2027-01-15"
    assert http.post("/_emulator/clock", json={"now": "soon"}).status_code == 400
    before = time.time()
    real = http.post("/_emulator/clock", json={"now": None}).json()
    assert before <= real["now"] <= time.time()  # the real clock again


def test_version_expiry_follows_the_emulator_clock(http: httpx.Client) -> None:
    body = {"data": [make_event()], "access_token": TOKEN}
    http.post("/_emulator/clock", json={"now": time.time()})
    assert http.post(f"/v21.0/{PIXEL}/events", json=body).status_code == 200
    # 2027-02-01: v21.0 (until 2027-01-21) has expired; event times are checked too, so
    # move them along with the clock.
    later = 1_801_440_000
    http.post("/_emulator/clock", json={"now": later})
    moved = {"data": [make_event(event_time=later - 60)], "access_token": TOKEN}
    assert graph_error(http.post(f"/v21.0/{PIXEL}/events", json=moved))["code"] == 2635
    assert http.post(f"/v26.0/{PIXEL}/events", json=moved).status_code == 200


# -- the GET edges ----------------------------------------------------------------------------


def test_debug_token(http: httpx.Client) -> None:
    auth = {"Authorization": f"OAuth {TOKEN}"}
    known = http.get("/v26.0/debug_token", params={"input_token": TOKEN}, headers=auth).json()
    assert known["data"]["is_valid"] is True
    assert known["data"]["expires_at"] == 0
    assert "ads_management" in known["data"]["scopes"]
    unknown = http.get("/debug_token", params={"input_token": "zzz"}, headers=auth).json()
    assert unknown["data"]["is_valid"] is False
    denied = http.get("/debug_token", params={"input_token": TOKEN})
    assert graph_error(denied)["code"] == 104


def test_dataset_quality_reflects_key_coverage(http: httpx.Client) -> None:
    rich = make_event(1)
    rich["user_data"] = {**rich["user_data"], "ph": ["a" * 64], "fbc": "fb.1.1700000000000.abc"}
    http.post(EVENTS_PATH, json={"data": [rich, make_event(2)], "access_token": TOKEN})
    report = http.get(
        "/v26.0/dataset_quality",
        params={"dataset_id": PIXEL},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()
    (purchase,) = report["web"]
    assert purchase["event_name"] == "Purchase"
    emq = purchase["event_match_quality"]
    assert 0 < emq["composite_score"] <= 10
    coverage = {k["identifier"]: k["coverage"]["percentage"] for k in emq["match_key_feedback"]}
    assert coverage["email"] == 100.0
    assert coverage["phone"] == 50.0
    assert (
        purchase["dedupe_key_feedback"][0]["server_events_with_dedupe_key"]["percentage"] == 100.0
    )
    other = http.get(
        "/v26.0/dataset_quality",
        params={"dataset_id": OTHER_PIXEL},
        headers={"Authorization": f"OAuth {TOKEN}"},
    )
    assert graph_error(other)["error_subcode"] == 33


def test_dataset_quality_score_grows_with_better_keys(http: httpx.Client) -> None:
    def score(pixel: str, token: str, event: dict[str, Any]) -> float:
        http.post(f"/v26.0/{pixel}/events", json={"data": [event], "access_token": token})
        report = http.get(
            "/v26.0/dataset_quality",
            params={"dataset_id": pixel},
            headers={"Authorization": f"OAuth {token}"},
        ).json()
        return float(report["web"][0]["event_match_quality"]["composite_score"])

    thin = make_event(1)
    rich = make_event(2)
    rich["user_data"] = {**rich["user_data"], "ph": ["b" * 64], "external_id": ["c" * 64]}
    assert score(OTHER_PIXEL, OTHER_TOKEN, rich) > score(PIXEL, TOKEN, thin)
