"""GraphClient / SyncGraphClient: request shape (via MockTransport) and real round trips."""

from __future__ import annotations

import hashlib
import hmac
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from capirelay import __version__
from capirelay.emulator import RunningEmulator
from capirelay.graph import (
    EventsResponse,
    GraphClient,
    GraphError,
    RetryClass,
    SyncGraphClient,
    encode_events_body,
)
from emulator_data import PIXEL, TOKEN, make_event

OK_BODY = {"events_received": 1, "messages": [], "fbtrace_id": "TRACE1"}


class Recorder:
    """A MockTransport handler that keeps the requests it saw."""

    def __init__(self, status: int = 200, body: Any = OK_BODY, headers: Any = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status = status
        self.body = body
        self.headers = headers or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        content = self.body if isinstance(self.body, bytes) else orjson.dumps(self.body)
        return httpx.Response(self.status, content=content, headers=self.headers)


def sync_client(recorder: Recorder, **options: Any) -> SyncGraphClient:
    return SyncGraphClient(transport=httpx.MockTransport(recorder), **options)


# -- request shape ----------------------------------------------------------------------


def test_token_and_proof_travel_in_the_json_body_never_the_url() -> None:
    recorder = Recorder()
    with sync_client(recorder, app_secret="SECRET456", partner_agent="capirelay") as client:
        result = client.send_events(
            PIXEL, [make_event()], access_token=TOKEN, test_event_code="TEST1"
        )
    assert result == EventsResponse(1, [], "TRACE1")
    (request,) = recorder.requests
    assert str(request.url) == f"https://graph.facebook.com/v26.0/{PIXEL}/events"
    assert TOKEN not in str(request.url)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == f"capirelay/{__version__}"
    body = orjson.loads(request.content)
    assert body["access_token"] == TOKEN
    expected_proof = hmac.new(b"SECRET456", TOKEN.encode(), hashlib.sha256).hexdigest()
    assert body["appsecret_proof"] == expected_proof
    assert body["test_event_code"] == "TEST1"
    assert body["partner_agent"] == "capirelay"
    assert body["data"][0]["event_id"] == "order-0"


def test_optional_request_params() -> None:
    recorder = Recorder()
    with sync_client(recorder, partner_agent="default-agent") as client:
        client.send_events(
            int(PIXEL),
            [make_event()],
            access_token=TOKEN,
            partner_agent="override",
            namespace_id="ns",
            upload_id="u1",
            upload_tag="tag",
            upload_source="crm",
        )
    body = orjson.loads(recorder.requests[0].content)
    assert {k: body[k] for k in ("partner_agent", "namespace_id", "upload_id")} == {
        "partner_agent": "override",
        "namespace_id": "ns",
        "upload_id": "u1",
    }
    assert (body["upload_tag"], body["upload_source"]) == ("tag", "crm")
    assert "test_event_code" not in body and "appsecret_proof" not in body


def test_pre_encoded_events_are_spliced_byte_for_byte() -> None:
    stored = orjson.dumps(make_event(1))
    body = encode_events_body([stored, make_event(2)], {"access_token": TOKEN})
    assert body.startswith(b'{"data":[' + stored + b",")
    parsed = orjson.loads(body)
    assert [e["event_id"] for e in parsed["data"]] == ["order-1", "order-2"]
    assert parsed["access_token"] == TOKEN


@pytest.mark.parametrize("pixel", ["12a", "../123", "", "123/events", "١٢٣", " 123"])
def test_pixel_id_must_be_ascii_digits(pixel: str) -> None:
    with sync_client(Recorder()) as client, pytest.raises(ValueError, match="pixel_id"):
        client.send_events(pixel, [make_event()], access_token=TOKEN)


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([], "at least one event"),
        ([make_event()] * 1001, "at most 1000"),
        ([b"[1, 2]"], "JSON objects"),
    ],
    ids=["empty", "too-many", "bytes-not-object"],
)
def test_bad_batches_fail_before_sending(events: list[Any], message: str) -> None:
    recorder = Recorder()
    with sync_client(recorder) as client, pytest.raises(ValueError, match=message):
        client.send_events(PIXEL, events, access_token=TOKEN)
    assert recorder.requests == []


def test_empty_token_is_refused() -> None:
    with sync_client(Recorder()) as client, pytest.raises(ValueError, match="access_token"):
        client.send_events(PIXEL, [make_event()], access_token="")


def test_api_version_shape_and_sunset_warning() -> None:
    with pytest.raises(ValueError, match="api_version"):
        SyncGraphClient(api_version="26.0")
    with pytest.warns(UserWarning, match="v15.0"):
        SyncGraphClient(api_version="v15.0").close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SyncGraphClient(api_version="v26.0").close()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, {"messages": []}),
        (200, b"<html>ok?</html>"),
        (200, {"error": {"message": "m", "type": "OAuthException", "code": 1}}),
    ],
)
def test_unusable_success_responses_raise(status: int, body: Any) -> None:
    with sync_client(Recorder(status, body)) as client, pytest.raises(GraphError) as caught:
        client.send_events(PIXEL, [make_event()], access_token=TOKEN)
    assert caught.value.retry_class is RetryClass.TRANSIENT


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (httpx.ConnectError("refused"), "connection error"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.RemoteProtocolError("reset"), "connection error"),
    ],
)
def test_transport_failures_become_transient_graph_errors(exc: Exception, kind: str) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    client = SyncGraphClient(transport=httpx.MockTransport(fail))
    with client, pytest.raises(GraphError) as caught:
        client.send_events(PIXEL, [make_event()], access_token=TOKEN)
    assert caught.value.status is None
    assert caught.value.retry_class is RetryClass.TRANSIENT
    assert f"{kind} ({type(exc).__name__}) to https://graph.facebook.com:443" in str(caught.value)
    assert TOKEN not in str(caught.value) and "/events" not in str(caught.value)


def test_get_calls_carry_the_token_in_the_authorization_header() -> None:
    recorder = Recorder(body={"data": {"is_valid": True}})
    with sync_client(recorder, app_secret="S") as client:
        client.dataset_quality(PIXEL, access_token=TOKEN, agent_name="capirelay")
        client.debug_token("OTHER", access_token=TOKEN)
    quality, debug = recorder.requests
    assert quality.url.path == "/v26.0/dataset_quality"
    assert quality.url.params["dataset_id"] == PIXEL
    assert quality.url.params["agent_name"] == "capirelay"
    assert "appsecret_proof" in quality.url.params
    for request in (quality, debug):
        assert request.headers["authorization"] == f"OAuth {TOKEN}"
        assert TOKEN not in str(request.url)
    assert debug.url.path == "/v26.0/debug_token"


async def test_async_client_has_the_same_request_shape() -> None:
    recorder = Recorder()
    async with GraphClient(transport=httpx.MockTransport(recorder), timeout=0.5) as client:
        result = await client.send_events(PIXEL, [orjson.dumps(make_event())], access_token=TOKEN)
    assert result.events_received == 1
    body = orjson.loads(recorder.requests[0].content)
    assert body["access_token"] == TOKEN
    assert TOKEN not in str(recorder.requests[0].url)


# -- real round trips against the emulator on a loopback socket --------------------------------


def _old_event() -> dict[str, Any]:
    return make_event(event_time=int(time.time()) - 8 * 86400)


def _fault(emulator: RunningEmulator, **spec: Any) -> None:
    httpx.post(f"{emulator.url}/_emulator/faults", json=spec).raise_for_status()


def _no_setup(emulator: RunningEmulator) -> None:
    return None


@dataclass(frozen=True)
class ErrorCase:
    """One row: how to provoke the failure, and what the client must report."""

    id: str
    expected: RetryClass
    shape: tuple[int | None, int | None, int | None]  # (HTTP status, code, subcode)
    setup: Callable[[RunningEmulator], None] = _no_setup
    client: dict[str, Any] = field(default_factory=dict)
    send: dict[str, Any] = field(default_factory=dict)


def _revoke(emulator: RunningEmulator) -> None:
    emulator.state.revoke_token(TOKEN)


def _injecting(**spec: Any) -> Callable[[RunningEmulator], None]:
    return lambda emulator: _fault(emulator, **spec)


ERROR_CASES = [
    ErrorCase("5xx-html", RetryClass.TRANSIENT, (503, None, None),
              _injecting(kind="http_error", status=503)),
    ErrorCase("500-graph-code-2", RetryClass.TRANSIENT, (500, 2, None),
              _injecting(kind="http_error", status=500)),
    ErrorCase("timeout", RetryClass.TRANSIENT, (None, None, None),
              _injecting(kind="timeout", seconds=5), client={"timeout": 0.3}),
    ErrorCase("throttled-80004", RetryClass.THROTTLED, (400, 80004, 2446079),
              _injecting(kind="throttle", code=80004, regain_minutes=1)),
    ErrorCase("throttled-613", RetryClass.THROTTLED, (400, 613, 1487742),
              _injecting(kind="throttle", code=613)),
    ErrorCase("transient-368", RetryClass.TRANSIENT, (400, 368, None),
              _injecting(kind="graph_error", code=368)),
    ErrorCase("auth-190-garbage", RetryClass.AUTH, (400, 190, None),
              send={"access_token": "garbage"}),
    ErrorCase("auth-190-revoked", RetryClass.AUTH, (400, 190, 463), _revoke),
    ErrorCase("invalid-2804xxx", RetryClass.INVALID, (400, 100, 2804003),
              send={"events": [make_event(1), _old_event()]}),
    # Code 100 without an event-data subcode names no event: not evidence against the
    # events, so the pixel is held (docs/reliability.md, Graph error classes).
    ErrorCase("unknown-over-1000", RetryClass.UNKNOWN, (400, 100, None),
              send={"raw_count": 1001}),
    ErrorCase("config-2635", RetryClass.CONFIG, (400, 2635, None),
              client={"api_version": "v15.0"}),
    ErrorCase("config-unknown-pixel", RetryClass.CONFIG, (400, 100, 33),
              send={"pixel": "424242"}),
]  # fmt: skip


@pytest.mark.filterwarnings("ignore:v15.0")
@pytest.mark.parametrize("case", ERROR_CASES, ids=[case.id for case in ERROR_CASES])
def test_each_error_class_round_trips(emulator: RunningEmulator, case: ErrorCase) -> None:
    case.setup(emulator)
    events = case.send.get("events") or [make_event()]
    token = case.send.get("access_token", TOKEN)
    client = SyncGraphClient(base_url=emulator.url, **case.client)
    with client, pytest.raises(GraphError) as caught:
        if "raw_count" in case.send:
            _send_unchecked(emulator, case.send["raw_count"])
        client.send_events(case.send.get("pixel", PIXEL), events, access_token=token)
    error = caught.value
    assert error.retry_class is case.expected
    assert (error.status, error.code, error.subcode) == case.shape
    assert TOKEN not in str(error) and TOKEN not in repr(error)
    assert "garbage" not in str(error)
    assert "buyer" not in str(error)
    if case.shape[1] is not None:
        assert error.fbtrace_id
    if case.shape[1] == 80004:
        assert error.retry_after == 60.0
    if case.shape[2] == 2804003:
        assert error.user_msg is not None and error.user_msg.startswith("Event 1: ")


def _send_unchecked(emulator: RunningEmulator, count: int) -> None:
    # The client refuses > 1,000 events itself; post the raw body the same way to
    # prove what the emulator (and Meta) answer to a client that does not.
    body = encode_events_body([make_event(i) for i in range(count)], {"access_token": TOKEN})
    response = httpx.post(
        f"{emulator.url}/v26.0/{PIXEL}/events",
        content=body,
        headers={"content-type": "application/json"},
    )
    raise GraphError.from_response(response.status_code, response.headers, response.content)


def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        SyncGraphClient(base_url=f"http://127.0.0.1:{port}") as client,
        pytest.raises(GraphError) as caught,
    ):
        client.send_events(PIXEL, [make_event()], access_token=TOKEN)
    assert caught.value.retry_class is RetryClass.TRANSIENT
    assert caught.value.status is None


def test_sync_round_trip_with_bytes_events_and_test_code(emulator: RunningEmulator) -> None:
    events = [orjson.dumps(make_event(i)) for i in range(3)]
    with SyncGraphClient(base_url=emulator.url) as client:
        result = client.send_events(PIXEL, events, access_token=TOKEN, test_event_code="T9")
    assert result.events_received == 3
    assert result.fbtrace_id
    stored = emulator.state.events(PIXEL, test_event_code="T9")
    assert [e["event"]["event_id"] for e in stored] == ["order-0", "order-1", "order-2"]


async def test_async_round_trip_reuses_one_client(emulator: RunningEmulator) -> None:
    async with GraphClient(base_url=emulator.url, partner_agent="capirelay-test") as client:
        for batch in range(5):
            events = [make_event(batch * 10 + i) for i in range(10)]
            result = await client.send_events(PIXEL, events, access_token=TOKEN)
            assert result.events_received == 10
        token_info = await client.debug_token(TOKEN, access_token=TOKEN)
        quality = await client.dataset_quality(PIXEL, access_token=TOKEN)
    assert emulator.state.stats()["events_accepted"] == 50
    assert token_info["data"]["is_valid"] is True
    assert quality["web"][0]["event_name"] == "Purchase"


async def test_async_throttle_and_recovery(emulator: RunningEmulator) -> None:
    _fault(emulator, kind="throttle", code=17, retry_after=2, count=1)
    async with GraphClient(base_url=emulator.url) as client:
        with pytest.raises(GraphError) as caught:
            await client.send_events(PIXEL, [make_event()], access_token=TOKEN)
        assert caught.value.retry_class is RetryClass.THROTTLED
        assert caught.value.retry_after == 2.0
        assert (
            await client.send_events(PIXEL, [make_event()], access_token=TOKEN)
        ).events_received == 1


async def test_async_get_errors_are_graph_errors(emulator: RunningEmulator) -> None:
    async with GraphClient(base_url=emulator.url) as client:
        with pytest.raises(GraphError) as caught:
            await client.dataset_quality("999", access_token=TOKEN)
    assert (caught.value.code, caught.value.subcode) == (100, 33)
    assert caught.value.retry_class is RetryClass.CONFIG
