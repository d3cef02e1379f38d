"""One socket write per fixed-length response (capirelay.server.coalesce), same bytes.

The same raw requests go, on one kept-alive connection, to a small app served by
uvicorn's httptools protocol as is and by the coalescing one; the bytes that come back
must be identical (keep-alive, pipelining, ``HEAD``, a chunked streaming response, a
204, ``Connection: close`` and an app failing after its head included), and each
fixed-length response must have been one ``transport.write``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from tests.server._uvicorn_thread import serving
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from capirelay.config import Settings
from capirelay.server import header_timeout
from capirelay.server.coalesce import CoalescingTransport, with_coalesced_writes
from capirelay.server.run import build_server

GUARD = 15.0  # only against a hang; never what the test measures


async def accept(request: Request) -> Response:
    await request.body()
    return Response(b'{"status":"queued"}', status_code=202, media_type="application/json")


async def plain(request: Request) -> Response:
    return Response(b"hello", media_type="text/plain")


async def stream(request: Request) -> StreamingResponse:
    async def parts() -> Any:
        yield b"first"
        yield b"second"

    return StreamingResponse(parts(), media_type="text/plain")


async def empty(request: Request) -> Response:
    return Response(status_code=204)


async def closing(request: Request) -> Response:
    return Response(b"bye", headers={"connection": "close"})


starlette_app = Starlette(
    routes=[
        Route("/accept", accept, methods=["POST"]),
        Route("/plain", plain),
        Route("/stream", stream),
        Route("/empty", empty),
        Route("/close", closing),
    ]
)


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/broken":
        # Starts a 10-byte response, then fails: uvicorn closes the connection.
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]}
        )
        raise RuntimeError("the app failed after its head")
    await starlette_app(scope, receive, send)


class Recorder:
    """A transport that counts the protocol's writes (everything else is the transport's)."""

    def __init__(self, transport: Any, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def recording(base: type[Any], writes: list[bytes]) -> type[Any]:
    class RecordingProtocol(base):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(Recorder(transport, writes))

    return RecordingProtocol


def serve(protocol: type[Any]) -> Iterator[tuple[str, int]]:
    config = uvicorn.Config(
        app, http=protocol, lifespan="off", log_config=None, date_header=False,
        server_header=False,
    )  # fmt: skip
    with serving(uvicorn.Server(config), GUARD) as address:
        yield address


def exchange(address: tuple[str, int], requests: list[bytes], *, pipelined: bool) -> bytes:
    """Send ``requests`` on one connection, the last closing it; all bytes until EOF."""
    received = bytearray()
    with socket.create_connection(address, timeout=GUARD) as conn:
        if pipelined:
            conn.sendall(b"".join(requests))
        else:
            for request in requests[:-1]:
                conn.sendall(request)
                received += read_response(conn)
            conn.sendall(requests[-1])
        while chunk := conn.recv(65536):
            received += chunk
    return bytes(received)


def read_response(conn: socket.socket, *, head_request: bool = False) -> bytes:
    """One response on a kept-alive connection (Content-Length, chunked, or neither for
    HEAD and 204)."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    if head_request or lines[0].split()[1] in (b"204", b"304"):
        return bytes(data)
    lengths = [int(line[15:]) for line in lines if line.startswith(b"content-length:")]
    length = lengths[0] if lengths else None
    if length is not None:
        while len(body) < length:
            more = conn.recv(65536)
            body += more
            data += more
        return bytes(data)
    while not body.endswith(b"0\r\n\r\n"):  # chunked
        more = conn.recv(65536)
        body += more
        data += more
    return bytes(data)


def request(method: str, path: str, body: bytes = b"", *, close: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


EVENT = b'{"data":[{"event_name":"Purchase"}]}'

# HEAD: test_head_and_close (read_response must be told it was one).
KEPT_ALIVE = [
    request("POST", "/accept", EVENT),
    request("POST", "/accept", EVENT),
    request("GET", "/plain"),
    request("GET", "/stream"),
    request("GET", "/empty"),
    request("POST", "/accept", EVENT),
    request("GET", "/plain", close=True),
]


@pytest.fixture
def servers() -> Iterator[dict[str, tuple[tuple[str, int], list[bytes]]]]:
    plain_writes: list[bytes] = []
    coalesced_writes: list[bytes] = []
    plain_server = serve(recording(HttpToolsProtocol, plain_writes))
    coalesced_server = serve(recording(with_coalesced_writes(HttpToolsProtocol), coalesced_writes))
    yield {
        "plain": (next(plain_server), plain_writes),
        "coalesced": (next(coalesced_server), coalesced_writes),
    }
    for server in (plain_server, coalesced_server):
        next(server, None)


@pytest.mark.parametrize("pipelined", [False, True], ids=["in-turn", "pipelined"])
def test_the_bytes_are_the_same_and_fixed_length_responses_are_one_write(
    servers: dict[str, tuple[tuple[str, int], list[bytes]]], pipelined: bool
) -> None:
    (plain_address, plain_writes), (coalesced_address, coalesced_writes) = servers.values()
    expected = exchange(plain_address, KEPT_ALIVE, pipelined=pipelined)
    assert exchange(coalesced_address, KEPT_ALIVE, pipelined=pipelined) == expected
    assert expected.count(b"HTTP/1.1 ") == len(KEPT_ALIVE)
    assert b"".join(coalesced_writes) == b"".join(plain_writes) == expected
    # Each fixed-length response's head and body, two writes as uvicorn does it, are one
    # write; the stream's head, chunks and end and the 204's head are written as before.
    assert coalesced_writes == joined_heads(plain_writes)
    assert len(coalesced_writes) == len(plain_writes) - 5  # 5 fixed-length responses


def joined_heads(writes: list[bytes]) -> list[bytes]:
    """``writes`` with each fixed-length response's head joined to the write after it."""
    joined: list[bytes] = []
    index = 0
    while index < len(writes):
        write = writes[index]
        if write.startswith(b"HTTP/1.1 ") and b"\r\ncontent-length: " in write:
            joined.append(write + writes[index + 1])
            index += 2
        else:
            joined.append(write)
            index += 1
    return joined


def test_head_and_close(servers: dict[str, tuple[tuple[str, int], list[bytes]]]) -> None:
    # HEAD: uvicorn writes no body, so its head is not held (it would never be written).
    requests = [request("HEAD", "/plain"), request("GET", "/close"), request("GET", "/plain")]
    answers = {}
    for name, (address, _) in servers.items():
        with socket.create_connection(address, timeout=GUARD) as conn:
            conn.sendall(requests[0])
            head = read_response(conn, head_request=True)
            conn.sendall(requests[1] + requests[2])  # the server closes after /close
            rest = bytearray()
            while chunk := conn.recv(65536):
                rest += chunk
        answers[name] = (head, bytes(rest))
    assert answers["coalesced"] == answers["plain"]
    head, rest = answers["plain"]
    assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
    assert b"content-length: 5" in head  # the GET's length, no body
    assert rest.endswith(b"\r\n\r\nbye") and rest.count(b"HTTP/1.1") == 1


def test_an_app_failing_after_its_head_still_sends_the_head(
    servers: dict[str, tuple[tuple[str, int], list[bytes]]],
) -> None:
    answers = {
        name: exchange(address, [request("GET", "/broken")], pipelined=False)
        for name, (address, _) in servers.items()
    }
    assert answers["coalesced"] == answers["plain"]
    assert answers["plain"].startswith(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n")


def test_the_gateway_serves_with_coalesced_writes(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    settings = Settings(storage=f"sqlite:///{tmp_path / 'c.db'}")
    server = build_server(settings, host="127.0.0.1", port=0, log_config=None)
    names = [cls.__name__ for cls in server.config.http.__mro__]  # type: ignore[union-attr]
    assert "CoalescingHttpToolsProtocol" in names and "HttpToolsProtocol" in names
    worker = header_timeout.WorkerProtocol
    assert "CoalescingHttpToolsProtocol" in [cls.__name__ for cls in worker.__mro__]


def test_h11_is_left_alone() -> None:
    assert with_coalesced_writes(H11Protocol) is H11Protocol


def test_a_held_head_goes_before_anything_else_the_cycle_does() -> None:
    class Cycle:
        response_started = True
        chunked_encoding = False
        response_complete = False
        scope = {"method": "GET"}

    class Transport:
        def __init__(self) -> None:
            self.calls: list[Any] = []

        def write(self, data: bytes) -> None:
            self.calls.append(data)

        def close(self) -> None:
            self.calls.append("close")

        def get_extra_info(self, name: str) -> str:
            self.calls.append(name)
            return name

    transport = Transport()
    coalescing = CoalescingTransport(transport, Cycle())  # type: ignore[arg-type]
    coalescing.write(b"head")
    assert transport.calls == []
    assert coalescing.get_extra_info("peername") == "peername"
    assert transport.calls == [b"head", "peername"]
    coalescing.write(b"head2")
    coalescing.close()
    assert transport.calls == [b"head", "peername", b"head2", "close"]
