"""Bounds on the time a client may take to send a request's headers and body (slowloris).

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits
forever for a request that has started and never finishes its head: a client
that sends half a request line and then nothing holds a connection (and a file
descriptor) for as long as it likes, and a few thousand such clients exhaust the
server.  :func:`with_header_timeout` wraps uvicorn's HTTP protocol class (h11 or
httptools, whichever uvicorn picked) so that a connection whose request head is
not complete ``seconds`` after its first byte (or after the connection opened) is
closed.  A body gets its own bound: a request whose body is not complete
``body_seconds`` after its head was, plus one second for every
:data:`MIN_BODY_BYTES_PER_SECOND` bytes that did arrive (headers sent in full, then
a body that never comes, or comes a byte at a time; a large batch on a slow uplink
that keeps that pace is not cut off), has its connection closed too; the route reads
a disconnect and acknowledges nothing.  Sizes are the routes' own limits
(:mod:`capirelay.server.body_limit`).

The protocols expose the request being served as ``cycle`` (set when the head is
complete, with ``more_body`` true until the body is); the header timer is armed
whenever bytes arrive while no new request head has been parsed, and disarmed as soon
as one has; the body timer is armed when a head is parsed whose body is still to come,
and disarmed when it has come.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = [
    "DEFAULT_BODY_TIMEOUT_SECONDS",
    "DEFAULT_HEADER_TIMEOUT_SECONDS",
    "MIN_BODY_BYTES_PER_SECOND",
    "auto_protocol",
    "gateway_protocol",
    "with_header_timeout",
]

DEFAULT_HEADER_TIMEOUT_SECONDS = 10.0
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0
# The pace a body may keep past its first ``body_seconds``: 16 KiB/s, a slow mobile
# uplink's.  A 5 MiB batch may take 30 + 320 seconds; a trickle slower than that is
# holding the connection, not sending.
MIN_BODY_BYTES_PER_SECOND = 16 * 1024


def auto_protocol() -> type[asyncio.Protocol]:
    """uvicorn's own choice for ``http="auto"``: httptools when installed, else h11."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


def gateway_protocol(
    seconds: float,
    body_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS,
    *,
    base: type[Any] | None = None,
) -> type[asyncio.Protocol]:
    """The HTTP protocol every gateway process serves with: uvicorn's own choice (or
    ``base``, a uvicorn HTTP protocol class), writing each fixed-length response in one
    write (:mod:`capirelay.server.coalesce`), refusing request heads over the size limits
    (:mod:`capirelay.server.head_limits`), closing connections whose headers take longer
    than ``seconds`` and whose body, once the headers are in, takes longer than
    ``body_seconds``."""
    from capirelay.server.coalesce import with_coalesced_writes
    from capirelay.server.head_limits import with_head_limits

    return with_header_timeout(
        with_head_limits(with_coalesced_writes(base or auto_protocol())),
        seconds,
        body_seconds=body_seconds,
    )


def with_header_timeout(
    base: type[Any], seconds: float, *, body_seconds: float | None = None
) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol class) with the header timeout of ``seconds``
    and, unless ``body_seconds`` is None, the body timeout of ``body_seconds``."""
    if seconds <= 0 or (body_seconds is not None and body_seconds <= 0):
        raise ValueError("the header and body timeouts must be positive")

    class HeaderTimeoutProtocol(base):
        _header_timer: asyncio.TimerHandle | None = None
        _awaited_after: Any = None  # the cycle that was current when the timer started
        _body_timer: asyncio.TimerHandle | None = None
        _body_cycle: Any = None  # the request whose body the body timer waits for
        _body_deadline = 0.0  # loop time: the head's arrival + body_seconds
        _body_bytes = 0  # what arrived of it since, each byte earning time

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between_requests():
                self._arm()
            super().data_received(data)
            cycle = self.cycle
            if self._header_timer is not None and cycle is not self._awaited_after:
                self._disarm()  # a new request head was parsed in time
            if body_seconds is not None and cycle is not None:
                if cycle.more_body and cycle is not self._body_cycle:
                    self._arm_body(cycle)  # a new head whose body is still to come
                elif self._body_timer is not None:
                    if self._body_cycle.more_body:
                        self._body_bytes += len(data)  # progress: more time, at a pace
                    else:
                        self._disarm_body()  # the body came in time

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._disarm_body()
            super().connection_lost(exc)

        def _arm_body(self, cycle: Any) -> None:
            self._disarm_body()
            self._body_cycle = cycle
            self._body_bytes = 0
            assert body_seconds is not None
            self._body_deadline = self.loop.time() + body_seconds
            self._body_timer = self.loop.call_at(self._body_deadline, self._body_too_slow)

        def _disarm_body(self) -> None:
            _cancel(self._body_timer)
            self._body_timer = None

        def _body_too_slow(self) -> None:
            self._body_timer = None
            cycle = self._body_cycle
            if cycle is not self.cycle or not cycle.more_body or self.transport.is_closing():
                return
            # One timer, moved on only when it falls due: the bytes that came earned time.
            deadline = self._body_deadline + self._body_bytes / MIN_BODY_BYTES_PER_SECOND
            if self.loop.time() < deadline:
                self._body_timer = self.loop.call_at(deadline, self._body_too_slow)
            else:
                self.transport.close()

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._awaited_after = self.cycle
            self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            _cancel(self._header_timer)
            self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is self._awaited_after and not self.transport.is_closing():
                self.transport.close()

    HeaderTimeoutProtocol.__name__ = f"HeaderTimeout{base.__name__}"
    HeaderTimeoutProtocol.__qualname__ = HeaderTimeoutProtocol.__name__
    return HeaderTimeoutProtocol


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    """Cancel ``timer``, if there is one."""
    if timer is not None:
        timer.cancel()


# Worker processes (``capirelay serve --workers N``) get their protocol class by import
# string, since uvicorn pickles its config for each child: ``header_timeout:WorkerProtocol``
# is built on first access from the timeout the supervisor put in the environment.
HEADER_TIMEOUT_ENV = "CAPIRELAY_WORKER_HEADER_TIMEOUT"
BODY_TIMEOUT_ENV = "CAPIRELAY_WORKER_BODY_TIMEOUT"
WORKER_PROTOCOL = "capirelay.server.header_timeout:WorkerProtocol"


def __getattr__(name: str) -> Any:
    if name == "WorkerProtocol":
        import os

        return gateway_protocol(
            float(os.environ.get(HEADER_TIMEOUT_ENV, str(DEFAULT_HEADER_TIMEOUT_SECONDS))),
            float(os.environ.get(BODY_TIMEOUT_ENV, str(DEFAULT_BODY_TIMEOUT_SECONDS))),
        )
    raise AttributeError(name)
