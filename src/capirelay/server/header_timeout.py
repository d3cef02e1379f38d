"""A bound on the time a client may take to send a request's headers (slowloris).

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits
forever for a request that has started and never finishes its head: a client
that sends half a request line and then nothing holds a connection (and a file
descriptor) for as long as it likes, and a few thousand such clients exhaust the
server.  :func:`with_header_timeout` wraps uvicorn's HTTP protocol class (h11 or
httptools, whichever uvicorn picked) so that a connection whose request head is
not complete ``seconds`` after its first byte (or after the connection opened) is
closed.  Bodies are not covered: the route's own limits and timeouts apply there
(:mod:`capirelay.server.body_limit`).

The protocols expose the request being served as ``cycle`` (set when the head is
complete); the timer is armed whenever bytes arrive while no new request head has
been parsed, and disarmed as soon as one has.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = [
    "DEFAULT_HEADER_TIMEOUT_SECONDS",
    "auto_protocol",
    "gateway_protocol",
    "with_header_timeout",
]

DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0


def auto_protocol() -> type[asyncio.Protocol]:
    """uvicorn's own choice for ``http="auto"``: httptools when installed, else h11."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


def gateway_protocol(seconds: float) -> type[asyncio.Protocol]:
    """The HTTP protocol every gateway process serves with: uvicorn's own choice, writing
    each fixed-length response in one write (:mod:`capirelay.server.coalesce`), closing
    connections whose headers take longer than ``seconds``."""
    from capirelay.server.coalesce import with_coalesced_writes

    return with_header_timeout(with_coalesced_writes(auto_protocol()), seconds)


def with_header_timeout(base: type[Any], seconds: float) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol class) with the header timeout of ``seconds``."""
    if seconds <= 0:
        raise ValueError("the header timeout must be positive")

    class HeaderTimeoutProtocol(base):
        _header_timer: asyncio.TimerHandle | None = None
        _awaited_after: Any = None  # the cycle that was current when the timer started

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between_requests():
                self._arm()
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._awaited_after:
                self._disarm()  # a new request head was parsed in time

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._awaited_after = self.cycle
            self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is self._awaited_after and not self.transport.is_closing():
                self.transport.close()

    HeaderTimeoutProtocol.__name__ = f"HeaderTimeout{base.__name__}"
    HeaderTimeoutProtocol.__qualname__ = HeaderTimeoutProtocol.__name__
    return HeaderTimeoutProtocol


# Worker processes (``capirelay serve --workers N``) get their protocol class by import
# string, since uvicorn pickles its config for each child: ``header_timeout:WorkerProtocol``
# is built on first access from the timeout the supervisor put in the environment.
HEADER_TIMEOUT_ENV = "CAPIRELAY_WORKER_HEADER_TIMEOUT"
WORKER_PROTOCOL = "capirelay.server.header_timeout:WorkerProtocol"


def __getattr__(name: str) -> Any:
    if name == "WorkerProtocol":
        import os

        return gateway_protocol(float(os.environ.get(HEADER_TIMEOUT_ENV, "10")))
    raise AttributeError(name)
