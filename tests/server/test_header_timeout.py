"""Slowloris: a connection that sends half a request line and then nothing is closed.

The gateway runs as ``capirelay serve`` builds it (:func:`build_server`), on both of
uvicorn's HTTP parsers.  Every wait below waits for a condition (the server closing
the socket, or a response); the socket timeout only stops a broken test from hanging.
How long the close took is printed (``-s``) for docs/reliability.md, never asserted.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from tests.server._uvicorn_thread import serving
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from capirelay.config import Settings
from capirelay.server import header_timeout
from capirelay.server.header_timeout import with_header_timeout
from capirelay.server.run import build_server

HEADER_TIMEOUT = 0.5
BODY_TIMEOUT = 0.7
GUARD = 15.0  # only against a hang; never what the test measures


@pytest.fixture(params=[H11Protocol, HttpToolsProtocol], ids=["h11", "httptools"])
def address(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, int]]:
    monkeypatch.delenv("CAPIRELAY_CONFIG", raising=False)
    settings = Settings(
        storage=f"sqlite:///{tmp_path / 'slow.db'}",
        header_timeout_seconds=HEADER_TIMEOUT,
        body_timeout_seconds=BODY_TIMEOUT,
    )
    server = build_server(settings, host="127.0.0.1", port=0, log_config=None)
    # The parser under test (build_server picks uvicorn's "auto" one).
    server.config.http = with_header_timeout(
        request.param, HEADER_TIMEOUT, body_seconds=BODY_TIMEOUT
    )
    with serving(server, GUARD) as address:
        yield address


def closed_after(conn: socket.socket) -> float:
    """Seconds until the server closed ``conn`` (reads until EOF)."""
    started = time.monotonic()
    conn.settimeout(GUARD)
    while conn.recv(4096):
        pass
    return time.monotonic() - started


def test_half_a_request_line_then_nothing_is_closed(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=GUARD) as conn:
        conn.sendall(b"GET /healthz HT")
        waited = closed_after(conn)
    print(f"\nhalf a request line: closed after {waited:.2f} s (header timeout {HEADER_TIMEOUT} s)")
    assert waited >= HEADER_TIMEOUT * 0.9  # not closed before its time


def test_a_silent_connection_is_closed(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=GUARD) as conn:
        waited = closed_after(conn)
    print(f"\nno byte at all: closed after {waited:.2f} s")
    assert waited >= HEADER_TIMEOUT * 0.9


def test_half_a_second_request_on_a_kept_alive_connection_is_closed(
    address: tuple[str, int],
) -> None:
    with socket.create_connection(address, timeout=GUARD) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        first = conn.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: gate")
        assert closed_after(conn) >= HEADER_TIMEOUT * 0.9


# A beacon's head (the route reads the body before anything else), its body to come.
BEACON_HEAD = (
    b"POST /v1/collect HTTP/1.1\r\nHost: gateway\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 40\r\n\r\n"
)


@pytest.mark.parametrize("body_part", [b"", b'{"pixel_id": "1'], ids=["none", "half"])
def test_a_body_that_stops_coming_is_closed(address: tuple[str, int], body_part: bytes) -> None:
    # Headers complete, then no body, or part of it: the connection was held for as long as
    # the client liked (the header timeout is over once the head is in).
    with socket.create_connection(address, timeout=GUARD) as conn:
        conn.sendall(BEACON_HEAD + body_part)
        waited = closed_after(conn)
    print(f"\nbody ({len(body_part)} of 40 bytes): closed after {waited:.2f} s")
    assert waited >= BODY_TIMEOUT * 0.9


def test_a_body_that_keeps_a_pace_is_not_cut_off(
    address: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A total deadline cut off a large batch on a slow uplink that was still coming (a
    # reviewer's find): each byte that arrives earns time at the minimum pace, here
    # lowered to 1 KiB/s so that 2 KiB chunks earn 2 s each, far more than their gaps.
    monkeypatch.setattr(header_timeout, "MIN_BODY_BYTES_PER_SECOND", 1024)
    chunks = 12
    head = BEACON_HEAD.replace(b"Content-Length: 40", b"Content-Length: %d" % (chunks * 2048))
    with socket.create_connection(address, timeout=GUARD) as conn:
        conn.sendall(head)
        started = time.monotonic()
        for _ in range(chunks):
            time.sleep(BODY_TIMEOUT / 4)  # paces the upload; nothing is asserted on time
            conn.sendall(b" " * 2048)
        answer = conn.recv(4096)
    print(f"\nbody trickled over {time.monotonic() - started:.2f} s: answered")
    assert answer.startswith(b"HTTP/1.1 4")  # answered (not a beacon), not closed


def test_a_body_sent_in_pieces_in_time_is_answered(address: tuple[str, int]) -> None:
    body = b'{"pixel_id": "1234567890", "event_name"}'
    assert len(body) == 40
    with socket.create_connection(address, timeout=GUARD) as conn:
        for piece in (BEACON_HEAD, body[:10], body[10:30], body[30:]):
            conn.sendall(piece)
        answer = conn.recv(4096)
        # Answered (the body is not a beacon: 422), and the connection stays usable.
        assert answer.startswith(b"HTTP/1.1 4")
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")


def test_headers_sent_in_pieces_within_the_bound_are_served(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=GUARD) as conn:
        for piece in (b"GET /hea", b"lthz HTTP/1.1\r\n", b"Host: gateway\r\n", b"\r\n"):
            conn.sendall(piece)
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("parser", [H11Protocol, HttpToolsProtocol], ids=["h11", "httptools"])
def test_headers_sent_in_time_are_served_after_the_server_stalled(
    parser: type[asyncio.Protocol],
) -> None:
    """The bound is on the client, not on the server: when the server's loop is stuck
    past the deadline (a blocking request, a CPU-starved worker), headers that arrived
    in time are still read and answered, not cut off by the timer that fell due during
    the stall (the loop reads the sockets before it runs that timer)."""
    stalling, release = threading.Event(), threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/stall":
            stalling.set()
            release.wait(GUARD)  # blocks the loop: nothing else is read meanwhile
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(
        app, loop="uvloop", http=with_header_timeout(parser, HEADER_TIMEOUT), log_config=None
    )
    with serving(uvicorn.Server(config), GUARD) as address:
        waiting = socket.create_connection(address, timeout=GUARD)
        stall = socket.create_connection(address, timeout=GUARD)
        try:
            # A round trip on a third connection: the loop has accepted the two before it
            # (accepts are taken in order), so the waiting one's timer is running.
            with socket.create_connection(address, timeout=GUARD) as probe:
                probe.sendall(b"GET / HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n")
                assert probe.recv(4096).startswith(b"HTTP/1.1 200")
            armed_by = time.monotonic()
            stall.sendall(b"GET /stall HTTP/1.1\r\nHost: g\r\n\r\n")
            assert stalling.wait(GUARD)
            # The loop is stuck in /stall: these headers arrive in time but are not read.
            waiting.sendall(b"GET / HTTP/1.1\r\nHost: g\r\n\r\n")
            # Keep the loop stuck until the waiting connection's deadline has passed.
            while time.monotonic() < armed_by + 2 * HEADER_TIMEOUT:
                time.sleep(0.05)
            release.set()
            assert stall.recv(4096).startswith(b"HTTP/1.1 200")
            assert waiting.recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            release.set()
            waiting.close()
            stall.close()
