"""One socket write per response instead of two (uvicorn's httptools protocol).

uvicorn writes a response's status line and headers (``http.response.start``) to the
transport at once, then its body (``http.response.body``) in a second write: two
``send`` system calls per small answer, which measured about a quarter of the event
loop's time under the single-event load (docs/benchmarks.md, "Ingest under wrk").
:func:`with_coalesced_writes` gives each request's cycle a transport that holds the
head of a fixed-length response (``Content-Length``, not a ``HEAD`` request) and writes
it together with the first body write, as one ``transport.write``.

The bytes on the wire are the same, in the same order; only the number of writes
changes.  Everything else is left alone: chunked (streaming) responses, ``HEAD``
answers (uvicorn writes no body for them), ``100 Continue``, and the h11 protocol
(whose cycles have no ``chunked_encoding``) write as before.  A held head is written
before anything else the cycle does with the transport (``close`` included), so a
response that fails after its head still sends that head, as uvicorn would.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CoalescingTransport", "with_coalesced_writes"]


class CoalescingTransport:
    """A request cycle's view of the connection's transport: the head of a fixed-length
    response waits for the first body write and goes out with it."""

    __slots__ = ("_cycle", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self._transport = transport
        self._cycle = cycle
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
            return
        cycle = self._cycle
        if (
            cycle.response_started
            and cycle.chunked_encoding is False  # Content-Length: the body follows at once
            and cycle.scope["method"] != "HEAD"  # no body write would follow
            and not cycle.response_complete
        ):
            # The head: uvicorn writes it when the response starts, the body next.
            self._held = data
            return
        self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # Anything else the cycle may use (get_extra_info, abort, ...): the transport's,
        # after the held head, so the order of bytes is kept.
        self.flush()
        return getattr(self._transport, name)


def with_coalesced_writes(base: type[Any]) -> type[asyncio.Protocol]:
    """``base`` (a uvicorn HTTP protocol class) writing each fixed-length response once.

    Only httptools' cycles are rewired (they say whether a response is chunked); any
    other protocol class is returned unchanged."""
    if not hasattr(base, "on_headers_complete"):
        return base

    class CoalescingProtocol(base):
        def on_headers_complete(self) -> None:
            before = self.cycle
            super().on_headers_complete()
            cycle = self.cycle
            # A new cycle (not an upgrade, which returns early) whose task has not run
            # yet: it is created here and started on a later turn of the loop.
            if cycle is not before and cycle is not None and hasattr(cycle, "chunked_encoding"):
                cycle.transport = CoalescingTransport(cycle.transport, cycle)

    CoalescingProtocol.__name__ = f"Coalescing{base.__name__}"
    CoalescingProtocol.__qualname__ = CoalescingProtocol.__name__
    return CoalescingProtocol
