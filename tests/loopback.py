"""Requests from client addresses of their own, for tests that guess credentials.

The dashboard's login throttle counts wrong guesses per client address: five in a
minute lock that client out, so a test that tries many wrong credentials against one
shared gateway sends each from another loopback address (Linux routes all of
127.0.0.0/8 to the loopback interface, and the gateway listens on 127.0.0.1).
"""

from __future__ import annotations

import itertools

import httpx

__all__ = ["another_client", "another_client_address"]

_clients = itertools.count()


def another_client_address() -> str:
    """A loopback address no other request of this test run came from."""
    n = next(_clients)
    return f"127.0.{1 + n // 250 % 250}.{1 + n % 250}"


def another_client(**options: object) -> httpx.Client:
    """An httpx client whose connections come from :func:`another_client_address`."""
    transport = httpx.HTTPTransport(local_address=another_client_address())
    return httpx.Client(transport=transport, **options)  # type: ignore[arg-type]
