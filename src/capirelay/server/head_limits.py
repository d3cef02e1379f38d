"""Bounds on the size of a request's head: its request line and header fields.

httptools, the parser uvicorn picks when it is installed, has no size limit of its own:
it keeps a header line until the line ends, and uvicorn keeps every header of a request
until the request is served.  One unauthenticated ``GET /healthz`` with 400 header lines
of 1 MiB each took the gateway from 87 to 443 MB and was answered 200 (an outside
review).  :func:`with_head_limits` wraps uvicorn's HTTP protocol class and counts a
head's bytes before the parser sees them:

* a request line longer than :data:`MAX_LINE_BYTES` is answered ``414 URI Too Long``;
* a header line longer than :data:`MAX_LINE_BYTES`, more than :data:`MAX_HEADER_FIELDS`
  header fields, or a head of more than :data:`MAX_HEAD_BYTES` in all are answered
  ``431 Request Header Fields Too Large``;

both with ``Connection: close``, and the connection is closed at once: the bytes past
the limit are never handed to the parser and nothing more is read.

What is counted: every byte from the start of a read that arrives while the connection
waits for a request head (a new connection, the next request on a kept-alive one) up to
the blank line that ends the head.  With httptools the URL and every header field are
also checked as the parser hands them over, and the fields of a chunked body's trailer
count against the same limits as the head's (llhttp hands them over as header fields):
that catches a head pipelined behind another request in the same read, which the
counting sees only from the next read on, and trailers, which arrive while a body is
read and the counting rests.  With h11 (used when httptools is not installed), h11's own
bound on an incomplete head or trailer is set to :data:`MAX_HEAD_BYTES`
(``h11_max_incomplete_event_size`` in :data:`capirelay.server.run.UVICORN_OPTIONS`).
"""

from __future__ import annotations

import logging
from typing import Any, Final, NamedTuple

import orjson

from capirelay.server.fast_path import SECURITY_HEADERS

__all__ = [
    "MAX_HEADER_FIELDS",
    "MAX_HEAD_BYTES",
    "MAX_LINE_BYTES",
    "Refusal",
    "with_head_limits",
]

log = logging.getLogger("capirelay.server")

# nginx's and Apache's default for one line (large_client_header_buffers 8k,
# LimitRequestLine / LimitRequestFieldSize 8190), Apache's for the number of fields
# (LimitRequestFields 100); a browser sends a few hundred bytes in 10 to 20 fields.
MAX_LINE_BYTES: Final = 8 * 1024
MAX_HEADER_FIELDS: Final = 100
MAX_HEAD_BYTES: Final = 64 * 1024

_CR: Final = 13


class Refusal(NamedTuple):
    """The answer to a head over the limits, and what the log line says of it."""

    why: str
    answer: bytes


def _refusal(status: int, reason: str, code: str, message: str) -> Refusal:
    """A whole response, in the gateway's error shape, that closes the connection."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    head = [
        b"HTTP/1.1 %d %s" % (status, reason.encode("ascii")),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        *(name + b": " + value for name, value in SECURITY_HEADERS),
    ]
    return Refusal(f"{status}: {message}", b"\r\n".join(head) + b"\r\n\r\n" + body)


REQUEST_LINE_TOO_LONG: Final = _refusal(
    414,
    "URI Too Long",
    "request_line_too_long",
    f"the request line is longer than {MAX_LINE_BYTES} bytes; send a shorter URL",
)
HEADER_LINE_TOO_LONG: Final = _refusal(
    431,
    "Request Header Fields Too Large",
    "headers_too_large",
    f"a header line is longer than {MAX_LINE_BYTES} bytes; send shorter headers "
    "(a large Cookie header is the usual cause)",
)
TOO_MANY_HEADER_FIELDS: Final = _refusal(
    431,
    "Request Header Fields Too Large",
    "headers_too_large",
    f"the request has more than {MAX_HEADER_FIELDS} header fields; send fewer",
)
HEAD_TOO_LARGE: Final = _refusal(
    431,
    "Request Header Fields Too Large",
    "headers_too_large",
    f"the request's headers are larger than {MAX_HEAD_BYTES} bytes in all; send fewer",
)


def with_head_limits(base: type[Any]) -> type[Any]:
    """``base`` (a uvicorn HTTP protocol class) refusing request heads over the limits."""
    limited = _counting(base)
    if hasattr(base, "on_headers_complete"):  # httptools: checked as parsed, too
        limited = _checking_parsed(limited)
    limited.__name__ = f"HeadLimits{base.__name__}"
    limited.__qualname__ = limited.__name__
    return limited


def _counting(base: type[Any]) -> type[Any]:
    """``base`` counting the bytes of each head before its parser sees them."""
    if hasattr(base, "on_headers_complete"):
        idle = None  # httptools: awaiting a head unless between one and its message's end
    else:
        import h11

        idle = h11.IDLE

    class CountingProtocol(base):
        # The head being received, as counted from the bytes (one read at a time).
        _head_bytes = 0  # all of it so far, blank lines before the request line included
        _head_lines = 0  # its lines that ended: the request line, then header fields
        _line_bytes = 0  # the line the last read ended in, so far
        _line_cr = False  # ... and whether its last byte was a CR
        _in_body = False  # httptools: between a head and the end of its message
        _refusal: Refusal | None = None  # set by the parser's callbacks (httptools)
        _refused = False  # answered: nothing more is read

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._awaiting_head():
                refusal = self._count(data)
                if refusal is not None:
                    self._refuse(refusal)
                    return
            try:
                super().data_received(data)
            except Exception:
                # What uvicorn makes of a message whose head was cut short (an upgrade
                # it can no longer read, say) is moot: the connection is refused.
                if self._refusal is None:
                    raise
            if self._refusal is not None:
                self._refuse(self._refusal)

        def _awaiting_head(self) -> bool:
            if idle is None:
                return not self._in_body
            return bool(self.conn.their_state is idle)

        def _count(self, data: bytes) -> Refusal | None:
            """Count ``data``, up to the blank line that ends the head, against the limits:
            the refusal of a head over them, or None."""
            if not self._head_bytes and data[:1] not in (b"\r", b"\n"):
                # The usual read: a whole head, well within every limit, at its start.
                end = data.find(b"\r\n\r\n", 0, MAX_LINE_BYTES)
                if end > 0 and data.count(b"\n", 0, end) <= MAX_HEADER_FIELDS:
                    return None
            pos, size = 0, len(data)
            while pos < size:
                newline = data.find(b"\n", pos)
                stop = size if newline == -1 else newline
                line = self._line_bytes + stop - pos
                cr = data[stop - 1] == _CR if stop > pos else self._line_cr
                content = line - cr  # a CR before the LF ends the line, it is not in it
                self._head_bytes += stop - pos + (newline != -1)
                if content > MAX_LINE_BYTES:
                    return HEADER_LINE_TOO_LONG if self._head_lines else REQUEST_LINE_TOO_LONG
                if self._head_bytes > MAX_HEAD_BYTES:
                    return HEAD_TOO_LARGE
                if newline == -1:
                    self._line_bytes, self._line_cr = line, cr
                    return None
                self._line_bytes, self._line_cr = 0, False
                pos = newline + 1
                if content:
                    self._head_lines += 1
                    if self._head_lines > MAX_HEADER_FIELDS + 1:
                        return TOO_MANY_HEADER_FIELDS
                elif self._head_lines:
                    # The blank line that ends the head: the next one counts from zero.
                    self._head_bytes = self._head_lines = 0
                    return None
            return None

        def _refuse(self, refusal: Refusal) -> None:
            self._refused = True
            transport = self.transport
            if transport.is_closing():
                return  # uvicorn answered (a parse error) and closed already
            log.info("refused a request head over the limits (%s)", refusal.why)
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                transport.write(refusal.answer)
                transport.close()
            else:
                # An earlier request of this connection is still being answered (the
                # client sent the next one without waiting): let that answer go out, then
                # close, as uvicorn's own shutdown does; nothing more is read meanwhile.
                cycle.keep_alive = False
                transport.pause_reading()

    return CountingProtocol


def _checking_parsed(base: type[Any]) -> type[Any]:
    """``base`` (httptools) checking each part of a head, and of a chunked body's trailer,
    as the parser hands it over.  After a refusal nothing more reaches uvicorn: the
    connection closes.

    Every request pays a call per header field here, so the field's callback is kept to
    the checks and a direct call of uvicorn's own (no ``super()``, no counter reset: the
    counters restart when a message ends, :meth:`on_message_complete`)."""
    base_on_url = base.on_url
    base_on_header = base.on_header
    base_on_headers_complete = base.on_headers_complete
    base_on_body = base.on_body
    base_on_message_complete = base.on_message_complete

    class CheckingProtocol(base):
        _parsed_bytes = 0  # the message's URL, header fields and trailer fields so far
        _parsed_fields = 0
        _refusal: Refusal | None  # CountingProtocol's

        def on_url(self, url: bytes) -> None:
            self._parsed_bytes += len(url)
            if self._refusal is None:
                if self._parsed_bytes > MAX_LINE_BYTES:
                    self._refusal = REQUEST_LINE_TOO_LONG
                else:
                    base_on_url(self, url)

        def on_header(self, name: bytes, value: bytes) -> None:
            size = len(name) + len(value) + 1  # "name:value", as short as its line can be
            fields = self._parsed_fields = self._parsed_fields + 1
            total = self._parsed_bytes = self._parsed_bytes + size
            if (
                size <= MAX_LINE_BYTES
                and fields <= MAX_HEADER_FIELDS
                and total <= MAX_HEAD_BYTES
                and self._refusal is None
            ):
                base_on_header(self, name, value)
            elif self._refusal is None:
                self._refusal = (
                    HEADER_LINE_TOO_LONG
                    if size > MAX_LINE_BYTES
                    else TOO_MANY_HEADER_FIELDS
                    if fields > MAX_HEADER_FIELDS
                    else HEAD_TOO_LARGE
                )

        def on_headers_complete(self) -> None:
            if self._refusal is None:  # a refused head is no request: the app never sees it
                self._in_body = True
                base_on_headers_complete(self)

        def on_body(self, body: bytes) -> None:
            if self._refusal is None:
                base_on_body(self, body)

        def on_message_complete(self) -> None:
            self._in_body = False
            self._parsed_bytes = self._parsed_fields = 0
            if self._refusal is None:
                base_on_message_complete(self)

    return CheckingProtocol
