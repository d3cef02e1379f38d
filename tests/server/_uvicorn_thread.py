"""A uvicorn server run on a thread of the test process, on a loopback port of its own."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

__all__ = ["serving"]


@contextlib.contextmanager
def serving(
    server: uvicorn.Server, guard: float, *, receive_buffer: int | None = None
) -> Iterator[tuple[str, int]]:
    """Run ``server`` until the block ends; its ``(host, port)``.  Waits for the server
    to have started (``guard`` seconds only stop a broken test from hanging).

    ``receive_buffer`` fixes the kernel's receive buffer of the connections the server
    accepts (they inherit the listening socket's), so that what a client can have sent
    beyond what the server read is bounded."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + guard
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        thread.join(guard)
        sock.close()
