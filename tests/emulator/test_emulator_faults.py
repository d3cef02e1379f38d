"""Fault injection: each fault looks like Meta's failure and lasts as long as asked."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest

from capirelay.emulator import FaultKind, RunningEmulator, parse_fault
from emulator_data import OTHER_PIXEL, OTHER_TOKEN, PIXEL, TOKEN, make_event
from waiting import wait_for

EVENTS_PATH = f"/v26.0/{PIXEL}/events"


def send(http: httpx.Client, *events: dict[str, Any], path: str = EVENTS_PATH) -> httpx.Response:
    return http.post(path, json={"data": list(events) or [make_event()], "access_token": TOKEN})


def inject(http: httpx.Client, **spec: Any) -> dict[str, Any]:
    response = http.post("/_emulator/faults", json=spec)
    assert response.status_code == 201, response.text
    return response.json()["data"][0]


def test_count_limits_a_fault_to_that_many_requests(http: httpx.Client) -> None:
    inject(http, kind="http_error", status=503, count=2)
    assert [send(http).status_code for _ in range(3)] == [503, 503, 200]


def test_duration_limits_a_fault_in_wall_clock_time(
    http: httpx.Client, emulator: RunningEmulator
) -> None:
    inject(http, kind="http_error", status=502, duration=0.3)
    assert send(http).status_code == 502
    # Not spent by the request above (no count): it ends when its 0.3 s are over.
    wait_for(lambda: not emulator.state.faults.active(), what="the fault's expiry")
    assert send(http).status_code == 200


def test_delete_clears_faults(http: httpx.Client) -> None:
    inject(http, kind="http_error")
    assert len(http.get("/_emulator/faults").json()["data"]) == 1
    assert http.delete("/_emulator/faults").json() == {"cleared": 1}
    assert send(http).status_code == 200


def test_500_is_graph_json_code_2_and_502_is_an_html_page(http: httpx.Client) -> None:
    inject(http, kind="http_error", status=500, count=1)
    inject(http, kind="http_error", status=502, count=1)
    first = send(http)
    assert first.status_code == 500
    assert first.json()["error"]["code"] == 2
    assert first.json()["error"]["is_transient"] is True
    second = send(http)
    assert second.status_code == 502
    assert second.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    ("code", "subcode"), [(4, None), (17, 2446079), (613, 1487742), (80004, 2446079)]
)
def test_throttle_faults_carry_meta_headers(
    http: httpx.Client, code: int, subcode: int | None
) -> None:
    inject(http, kind="throttle", code=code, regain_minutes=5, retry_after=30, count=1)
    response = send(http)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error.get("error_subcode")) == (code, subcode)
    usage = orjson.loads(response.headers["x-business-use-case-usage"])
    assert usage[PIXEL][0]["estimated_time_to_regain_access"] == 5
    assert response.headers["retry-after"] == "30"
    assert "x-app-usage" in response.headers


def test_latency_fixed_and_range(http: httpx.Client) -> None:
    inject(http, kind="latency", latency_ms=150, count=1)
    started = time.perf_counter()
    assert send(http).status_code == 200
    assert time.perf_counter() - started >= 0.15
    inject(http, kind="latency", latency_ms=50, latency_max_ms=80, count=1)
    started = time.perf_counter()
    assert send(http).status_code == 200
    assert time.perf_counter() - started >= 0.05


def test_timeout_fault_hangs_past_the_client_timeout(emulator: RunningEmulator) -> None:
    with httpx.Client(base_url=emulator.url, timeout=0.3) as http:
        inject(http, kind="timeout", seconds=5, count=1)
        with pytest.raises(httpx.ReadTimeout):
            send(http)
        assert send(http).status_code == 200


def test_token_revoked_fault_for_one_token(http: httpx.Client) -> None:
    inject(http, kind="token_revoked", token=TOKEN, count=1)
    listed = http.get("/_emulator/faults").json()["data"]
    assert TOKEN not in orjson.dumps(listed).decode()
    other = http.post(
        f"/v26.0/{OTHER_PIXEL}/events", json={"data": [make_event()], "access_token": OTHER_TOKEN}
    )
    assert other.status_code == 200
    error = send(http).json()["error"]
    assert (error["code"], error["error_subcode"]) == (190, 463)
    assert send(http).status_code == 200


def test_invalid_event_fault_targets_one_event_id(http: httpx.Client) -> None:
    inject(http, kind="invalid_event", event_id="order-3", subcode=2804009, count=1)
    clean = send(http, make_event(1), make_event(2))
    assert clean.status_code == 200, "requests without that event_id pass"
    rejected = send(http, make_event(2), make_event(3))
    error = rejected.json()["error"]
    assert (error["code"], error["error_subcode"]) == (100, 2804009)
    assert error["error_user_msg"].startswith("Event 1: ")
    assert send(http, make_event(3)).status_code == 200, "count=1 is used up"


def test_graph_error_fault_any_code(http: httpx.Client) -> None:
    inject(http, kind="graph_error", code=368, status=400, message="(#368) Blocked", count=1)
    error = send(http).json()["error"]
    assert (error["code"], error["message"]) == (368, "(#368) Blocked")


def test_pixel_scoped_fault(http: httpx.Client) -> None:
    inject(http, kind="http_error", pixel_id=OTHER_PIXEL)
    assert send(http).status_code == 200
    other = http.post(
        f"/v26.0/{OTHER_PIXEL}/events", json={"data": [make_event()], "access_token": OTHER_TOKEN}
    )
    assert other.status_code == 500


def test_probability_is_reproducible_with_a_seed(emulator: RunningEmulator) -> None:
    with httpx.Client(base_url=emulator.url) as http:
        inject(http, kind="http_error", probability=0.5)
        statuses = [send(http).status_code for _ in range(40)]
    assert 5 < statuses.count(500) < 35
    assert statuses.count(200) + statuses.count(500) == 40


def test_faults_are_logged_as_errors(http: httpx.Client) -> None:
    inject(http, kind="http_error", status=503, count=1)
    send(http)
    assert http.get("/_emulator/stats").json()["errors_by_code"] == {"http_503": 1}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "meteor"}, "kind must be one of"),
        ({"kind": "latency"}, "need latency_ms"),
        ({"kind": "graph_error"}, "need code"),
        ({"kind": "invalid_event"}, "need event_id"),
        ({"kind": "throttle", "code": 100}, "throttle code"),
        ({"kind": "http_error", "status": 404}, "5xx"),
        ({"kind": "http_error", "count": 0}, "count"),
        ({"kind": "http_error", "duration": -1}, "duration"),
        ({"kind": "http_error", "probability": 2}, "probability"),
        ({"kind": "http_error", "colour": "red"}, "unknown fault field"),
        ({"kind": "http_error", "status": "500"}, "wrong type"),
        ({"kind": "http_error", "count": True}, "wrong type"),
    ],
)
def test_parse_fault_rejects_bad_specs(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_fault(spec)


def test_bad_fault_spec_is_400(http: httpx.Client) -> None:
    assert http.post("/_emulator/faults", json={"kind": "meteor"}).status_code == 400
    assert http.post("/_emulator/faults", content=b"[").status_code == 400


def test_several_faults_in_one_post(http: httpx.Client) -> None:
    response = http.post(
        "/_emulator/faults",
        json={"faults": [{"kind": "latency", "latency_ms": 1}, {"kind": "http_error", "count": 1}]},
    )
    kinds = [f["kind"] for f in response.json()["data"]]
    assert kinds == [FaultKind.LATENCY, FaultKind.HTTP_ERROR]
