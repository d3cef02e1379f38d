"""The ingest fast path (``capirelay.server.fast_path``): what the middleware stack did for
``POST /v1/events`` and ``/v1/collect`` is still done, called as ASGI directly so each
message the app sends (and an exception it raises) is visible."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from capirelay.config import IngestKey, PixelSettings, Secret, Settings
from capirelay.outbox.memory import InMemoryOutbox
from capirelay.server import create_app
from capirelay.server.fast_path import Answer, Gateway, Incoming

PIXEL = "1234567890"
KEY = "fast-path-key-0123456789"
SECURITY = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-store",
}


class Sent:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def json(self) -> Any:
        return orjson.loads(self.messages[1]["body"])


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8080),
    }


def _receiver(*messages: dict[str, Any]) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()  # the app only watches for a disconnect after the body
        raise AssertionError("unreachable")

    return receive


def _chunks(*parts: bytes) -> list[dict[str, Any]]:
    return [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]


def _event_body(event_id: str) -> bytes:
    event = {
        "event_name": "Purchase",
        "event_time": int(time.time()),
        "event_id": event_id,
        "action_source": "website",
        "event_source_url": "https://shop.example/thanks",
        "user_data": {
            "email": "a@example.com",
            "client_user_agent": "Mozilla/5.0",
            "fbp": "fb.1.1700000000000.42",
        },
        "custom_data": {"value": 10.5, "currency": "USD"},
    }
    return orjson.dumps({"pixel_id": PIXEL, "data": [event]})


@pytest.fixture
async def gateway() -> AsyncIterator[Any]:
    settings = Settings(
        storage="sqlite:///unused.db",
        graph_url="http://127.0.0.1:9",
        pixels={PIXEL: PixelSettings(default_country="US")},
        ingest_keys={"backend": IngestKey(key=Secret(value=KEY))},
        max_body_bytes=4096,
    )
    outbox = InMemoryOutbox()
    await outbox.open()
    app = create_app(settings, outbox=outbox)
    async with app.router.lifespan_context(app):
        yield app
    await outbox.close()


async def _call(app: Any, scope: dict[str, Any], *messages: dict[str, Any]) -> Sent:
    sent = Sent()
    await app(scope, _receiver(*messages), sent)
    return sent


def _auth(*extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {KEY}".encode()), *extra]


async def test_an_accepted_event_is_answered_202_with_json_and_the_security_headers(
    gateway: Any,
) -> None:
    body = _event_body("fast-1")
    headers = _auth((b"content-length", str(len(body)).encode()))
    sent = await _call(gateway, _scope("POST", "/v1/events", headers), *_chunks(body))
    assert sent.status == 202
    assert sent.headers[b"content-type"] == b"application/json"
    assert sent.headers[b"content-length"] == str(len(sent.messages[1]["body"])).encode()
    assert SECURITY.items() <= sent.headers.items()
    assert b"server" not in sent.headers
    assert sent.json["results"][0] == {
        "index": 0,
        "event_id": "fast-1",
        "status": "queued",
        "problems": [],
    }


async def test_a_chunked_body_is_read_whole(gateway: Any) -> None:
    body = _event_body("fast-chunked")
    sent = await _call(
        gateway, _scope("POST", "/v1/events", _auth()), *_chunks(body[:10], body[10:40], body[40:])
    )
    assert sent.status == 202
    assert sent.json["results"][0]["status"] == "queued"


async def test_the_first_of_a_repeated_header_counts(gateway: Any) -> None:
    body = _event_body("fast-repeat")
    headers = [*_auth(), (b"authorization", b"Bearer not-the-key")]
    sent = await _call(gateway, _scope("POST", "/v1/events", headers), *_chunks(body))
    assert sent.status == 202


async def test_a_missing_key_is_401_with_its_challenge_and_the_security_headers(
    gateway: Any,
) -> None:
    sent = await _call(gateway, _scope("POST", "/v1/events", []), *_chunks(b"{}"))
    assert sent.status == 401
    assert sent.json["error"]["code"] == "missing_key"
    assert sent.headers[b"www-authenticate"] == b'Bearer realm="capirelay"'
    assert SECURITY.items() <= sent.headers.items()


async def test_a_bad_content_length_is_400_before_the_key_is_checked(gateway: Any) -> None:
    headers = [(b"content-length", b"lots")]
    sent = await _call(gateway, _scope("POST", "/v1/events", headers), *_chunks(b"{}"))
    assert sent.status == 400
    assert sent.json["error"]["code"] == "bad_content_length"


async def test_a_declared_body_over_the_limit_is_413_before_the_key_is_checked(
    gateway: Any,
) -> None:
    headers = [(b"content-length", b"5000")]
    sent = await _call(gateway, _scope("POST", "/v1/events", headers), *_chunks(b"{}"))
    assert sent.status == 413
    assert sent.json["error"]["code"] == "body_too_large"
    assert sent.headers[b"connection"] == b"close"


async def test_a_chunked_body_over_the_limit_is_cut_off_with_413(gateway: Any) -> None:
    parts = [b"x" * 3000, b"x" * 3000, b"x" * 3000]
    sent = await _call(gateway, _scope("POST", "/v1/events", _auth()), *_chunks(*parts))
    assert sent.status == 413
    assert sent.json["error"]["code"] == "body_too_large"


async def test_a_client_gone_before_its_body_is_400(gateway: Any) -> None:
    sent = await _call(
        gateway,
        _scope("POST", "/v1/events", _auth()),
        {"type": "http.request", "body": b'{"pixel', "more_body": True},
        {"type": "http.disconnect"},
    )
    assert sent.status == 400
    assert sent.json["error"]["code"] == "client_disconnected"


async def test_other_methods_on_the_fast_paths_are_still_405(gateway: Any) -> None:
    sent = await _call(gateway, _scope("GET", "/v1/events", _auth()), *_chunks(b""))
    assert sent.status == 405
    assert sent.json["error"]["code"] == "method_not_allowed"
    assert SECURITY.items() <= sent.headers.items()


async def test_an_unexpected_failure_is_a_500_that_acknowledges_nothing_and_is_reraised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(state: State, incoming: Incoming) -> Answer:
        raise RuntimeError("secret detail that must not be answered")

    app = Gateway(fast_routes={"/v1/events": broken}, body_limits={}, routes=[])
    sent = Sent()
    with pytest.raises(RuntimeError):
        await app(_scope("POST", "/v1/events", []), _receiver(*_chunks(b"{}")), sent)
    # Logged with its type, method and path only (the text can hold anything).
    assert "unhandled RuntimeError on POST /v1/events" in caplog.messages
    assert "secret detail" not in caplog.text
    assert sent.status == 500
    assert sent.json == {
        "error": {
            "code": "internal_error",
            "message": "the gateway failed; nothing was acknowledged",
        }
    }
    assert SECURITY.items() <= sent.headers.items()


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "capirelay.access"]


async def test_an_unhandled_failure_is_logged_as_500_on_either_path(
    gateway: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A Starlette route's failure is answered 500 by Starlette's outermost layer, outside
    # the middleware that writes the access line: the line said status 0.
    caplog.set_level(logging.INFO, logger="capirelay.access")

    async def broken_route(request: Request) -> Response:
        raise RuntimeError("storage said something")

    gateway.router.routes.append(Route("/broken", broken_route, methods=["GET"]))
    sent = Sent()
    with pytest.raises(RuntimeError):
        await gateway(_scope("GET", "/broken", []), _receiver(*_chunks(b"")), sent)
    assert sent.status == 500
    [line] = _access_lines(caplog)
    assert line.startswith("GET /broken 500 "), line
    # Answered inside the headers middleware, like every other response: the security
    # headers (no-store, nosniff, ...) and the gateway's JSON error, once.
    assert [m["type"] for m in sent.messages].count("http.response.start") == 1
    for name, value in SECURITY.items():
        assert sent.headers.get(name) == value, sent.headers
    assert b'"internal_error"' in b"".join(m.get("body", b"") for m in sent.messages[1:])

    async def broken(state: State, incoming: Incoming) -> Answer:
        raise RuntimeError("storage said something")

    caplog.clear()
    fast = Gateway(fast_routes={"/v1/events": broken}, body_limits={}, routes=[])
    sent = Sent()
    with pytest.raises(RuntimeError):
        await fast(_scope("POST", "/v1/events", []), _receiver(*_chunks(b"{}")), sent)
    assert sent.status == 500
    [line] = _access_lines(caplog)
    assert line.startswith("POST /v1/events 500 "), line


@pytest.mark.parametrize(
    ("headers", "extra"),
    [
        ([(b"host", b"gw.example")], {}),
        ([(b"host", b"gw.example:8443"), (b"cookie", b"_fbp=fb.1.1.2; a=b")], {}),
        ([], {"server": ("::1", 8080)}),  # no Host: the server address, IPv6 bracketed
        ([], {"server": ("10.0.0.1", 80), "client": None}),  # default port, no client
        ([(b"host", b"bad host!")], {"scheme": "https", "server": ("gw", 443)}),
        (
            [
                (b"cookie", b"_fbp=first; x=1"),
                (b"Cookie-Like", b"no"),
                (b"cookie", b'_fbp=second; q="quoted\\"v"; ;bare'),
                (b"user-agent", b"UA one"),
                (b"user-agent", b"UA two"),  # the first of a repeated name wins
                (b"x-forwarded-for", b"203.0.113.9, 10.0.0.2"),
            ],
            {"query_string": b"a=1&b=%20", "path": "/v1/collect?#\\"},
        ),
    ],
)
def test_incoming_reads_the_request_as_starlette_does(
    headers: list[tuple[bytes, bytes]], extra: dict[str, Any]
) -> None:
    """/v1/collect reads URL, cookies, client and headers from :class:`Incoming` without a
    Starlette ``Request``: the same values, whatever the scope holds."""
    from starlette.requests import Request

    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/collect",
        "query_string": b"",
        "headers": headers,
        "client": ("198.51.100.7", 5555),
        "server": ("127.0.0.1", 8080),
        **extra,
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    incoming, request = Incoming(scope, receive), Request(scope, receive)
    assert incoming.url() == str(request.url)
    assert Incoming(scope, receive).url() == str(request.url)  # remembered: the same again
    assert incoming.cookies() == request.cookies
    assert incoming.client_host() == (request.client.host if request.client else None)
    text = incoming.text_headers()
    # Callers look names up in lowercase (ASGI servers send them so).
    for name in {k.decode("latin-1").lower() for k, _ in headers} | {"sec-gpc", "referer"}:
        assert text.get(name) == request.headers.get(name), name


def test_the_remembered_request_url_follows_every_value_it_is_built_from() -> None:
    """The request URL is remembered by the scope values Starlette's ``URL`` reads; a scope
    that differs in any one of them gets its own URL, the one Starlette builds for it."""
    from starlette.datastructures import URL

    base: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/collect",
        "query_string": b"",
        "headers": [(b"host", b"gw.example")],
        "server": ("127.0.0.1", 8080),
    }
    variants: list[dict[str, Any]] = [
        base,
        {**base, "scheme": "https"},
        {**base, "path": "/v1/collect/"},
        {**base, "query_string": b"x=1"},
        {**base, "headers": [(b"host", b"other.example")]},
        {**base, "headers": [(b"host", b"gw.example"), (b"host", b"second.example")]},
        {**base, "headers": []},
        {**base, "headers": [], "server": ("127.0.0.1", 8081)},
        {**base, "headers": [], "server": None},
        {**base, "headers": [], "server": ["10.0.0.1", 8082]},  # a list: built every time
    ]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    expected = [str(URL(scope=scope)) for scope in variants]
    assert len(set(expected)) == len(expected) - 1  # only the repeated Host matches base
    for _ in range(2):  # built, then remembered
        assert [Incoming(scope, receive).url() for scope in variants] == expected


def test_the_gateway_state_keeps_starlettes_values_and_attributes_the_same() -> None:
    """``app.state`` is a Starlette ``State`` whose values are also plain attributes: the
    normal look-up finds them, without failing over to ``State.__getattr__``."""
    from capirelay.server.fast_path import GatewayState

    app = create_app(Settings(pixels={PIXEL: PixelSettings()}))
    state = app.state
    assert isinstance(state, GatewayState) and isinstance(state, State)
    assert "settings" in vars(state) and "metrics" in vars(state)

    state.marker = 1
    assert state.marker == 1 and state._state["marker"] == 1 and vars(state)["marker"] == 1
    state.marker = 2  # replaced in both
    assert state.marker == 2 and state._state["marker"] == 2
    del state.marker
    assert "marker" not in state._state and "marker" not in vars(state)
    with pytest.raises(AttributeError, match="marker"):
        _ = state.marker


def test_reading_a_state_value_raises_no_attribute_error_on_the_way() -> None:
    """The reason for the class: a value read from Starlette's own ``State`` first fails
    the normal look-up (an ``AttributeError`` built and dropped) before ``__getattr__``
    finds it; from the gateway's state it does not."""
    from capirelay.server.fast_path import GatewayState

    class Counting:
        def __init__(self, state_class: type[State]) -> None:
            case = self
            self.misses = 0

            class Counted(state_class):  # type: ignore[valid-type,misc]
                def __getattr__(self, key: str) -> Any:
                    case.misses += 1
                    return super().__getattr__(key)

            self.state = Counted()
            self.state.outbox = object()

    plain, gateway = Counting(State), Counting(GatewayState)
    for case in (plain, gateway):
        for _ in range(3):
            assert case.state.outbox is not None
    assert plain.misses == 3
    assert gateway.misses == 0
