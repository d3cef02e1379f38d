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
def serving(server: uvicorn.Server, guard: float) -> Iterator[tuple[str, int]]:
    """Run ``server`` until the block ends; its ``(host, port)``.  Waits for the server
    to have started (``guard`` seconds only stop a broken test from hanging)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
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
