"""The ingest routes served as plain ASGI, without Starlette's routing and middleware layers.

``POST /v1/events`` and ``POST /v1/collect`` are most of the gateway's traffic, and a
single-event request is small: Starlette's middleware stack, router, ``Request`` and
``Response`` objects and header look-ups (a linear scan per look-up) cost about as much
as the event's own parse, hash and validation.  :class:`Gateway` (the app
:func:`capirelay.server.app.create_app` returns) answers those two routes itself and
hands every other request to Starlette.  Everything the middleware did for them is done
here, in the same order:

* the body limit (:mod:`capirelay.server.body_limit`): a bad ``Content-Length`` is a 400
  and a declared one over ``/v1/events``' limit a 413 before anything else; a body
  sent chunked is counted as it arrives and cut off with 413 at the limit
  (:meth:`Incoming.body`; ``/v1/collect`` answers its own declared 413, with CORS);
* the security headers of :class:`capirelay.server.app.GatewayHeadersMiddleware` and
  its access line (method, path, status, duration; no query string, no address);
* an :class:`~capirelay.server.http.ApiError` becomes its JSON error answer; any other
  exception a logged 500 ``internal_error`` (nothing acknowledged), then re-raised for
  the server to log, as Starlette's ``ServerErrorMiddleware`` does.

A route here is ``async (state, incoming) -> Answer``.  The same handlers stay
registered as Starlette routes (:class:`FastRoute`), so other methods on their paths
still get 405 and any mounting of the router still reaches them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import lru_cache
from typing import Any, Final, NamedTuple

import orjson
from starlette.applications import Starlette
from starlette.datastructures import URL, State
from starlette.requests import cookie_parser
from starlette.types import Receive, Scope, Send

from capirelay.logs import PREREDACTED, REDACTED, redact_text
from capirelay.server.body_limit import BodyTooLarge
from capirelay.server.http import ApiError, bad_content_length, too_large

__all__ = [
    "Answer",
    "FastRoute",
    "Gateway",
    "GatewayState",
    "Incoming",
    "error_answer",
    "json_answer",
    "log_unhandled",
]

log = logging.getLogger("capirelay.server")
access_log = logging.getLogger("capirelay.access")

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
_JSON = (b"content-type", b"application/json")


def add_security_headers(headers: list[tuple[bytes, bytes]]) -> None:
    """Append the security headers a route did not set itself (the cacheable snippet sets
    its own ``cache-control``)."""
    present = {name.lower() for name, _ in headers}
    headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)


def log_access(scope: Scope, status: int, started: float) -> None:
    """The access line: method, path, status and duration only (query strings may hold
    click ids, and client addresses are personal data).

    One line per request, so it skips what a line costs and does not need: the caller's
    frame (``findCaller``) and the redaction filter's pass over the whole message, whose
    free text, the path and an unusual method, is redacted here (the rest are numbers).
    The line reads as before."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    record = access_log.makeRecord(
        access_log.name,
        logging.INFO,
        __file__,
        0,
        "%s %s %d %.1fms",
        (
            method if (method := scope["method"]) in _METHODS else _shown(method),
            _shown(scope["path"]),
            status,
            (time.perf_counter() - started) * 1000,
        ),
        None,
        extra=_PREREDACTED,
    )
    access_log.handle(record)


def log_unhandled(exc: BaseException, scope: Scope) -> None:
    """The error line of a request that failed: the exception's type (its text can hold
    anything), the method and the path, shown as the access line shows them (escaped: a
    decoded "%00" or "%0a" is written as "\\x00" or "\\n", not as itself)."""
    method = scope["method"]
    log.error(
        "unhandled %s on %s %s",
        type(exc).__name__,
        method if method in _METHODS else _shown(method),
        _shown(scope["path"]),
    )


_PREREDACTED: Final = {REDACTED: PREREDACTED}
# The methods shown as they came; any other (h11, unlike httptools, takes any token as a
# method) is shown as a path is (_shown).
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@lru_cache(maxsize=256)
def _shown(text: str) -> str:
    """A path (or an unusual method) as the access line shows it: redacted, escaped,
    redacted again.  The gateway's own routes repeat; any other path is a miss that costs
    what it always did.

    The path arrives percent-decoded: "%0a" is a line break that would start a forged
    line of its own in a text log, so what is not printable is escaped.  An escape ends
    in a letter or digit ("\\n", "\\x00"), which would hide what follows it from the
    redaction's word boundaries, hence the pass before; the pass after catches what the
    escapes join up."""
    text = redact_text(text)
    if not text.isprintable():
        text = redact_text(text.encode("unicode_escape").decode("ascii"))
    return text


class Answer(NamedTuple):
    """A response: status, JSON body bytes and extra headers (lowercase names)."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


def json_answer(
    status: int, content: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> Answer:
    return Answer(status, orjson.dumps(content), headers or [])


def raw_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def error_answer(exc: ApiError, extra: Mapping[str, str] | None = None) -> Answer:
    """The answer :meth:`ApiError.response` gives, as an :class:`Answer`."""
    body = {"error": {"code": exc.code, "message": exc.message}}
    return json_answer(exc.status, body, raw_headers({**exc.headers, **(extra or {})}))


@lru_cache(maxsize=1024)
def _request_url(
    scheme: str, server: tuple[Any, ...] | None, path: str, query: bytes, host: bytes | None
) -> str:
    """``str(URL(scope=...))`` of a scope holding these values (see :meth:`Incoming.url`)."""
    headers = [] if host is None else [(b"host", host)]
    scope = {"scheme": scheme, "server": server, "path": path, "query_string": query}
    return str(URL(scope={**scope, "headers": headers}))


class Incoming:
    """One request on the fast path: its scope, its headers (first one of a name wins, as
    Starlette's ``Headers`` does) and a bounded body reader."""

    __slots__ = ("headers", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        # ASGI servers send lowercase names; reversed, so the first of a repeated name wins.
        self.headers: dict[bytes, bytes] = dict(reversed(scope["headers"]))

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    def text_headers(self) -> dict[str, str]:
        """The headers as text, first of a name wins (what ``Request.headers.get`` answers
        for a lowercase name), as a dict: one hash look-up each, not a scan of the list."""
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers.items()}

    def url(self) -> str:
        """``str(request.url)``, built the same way, from what Starlette's ``URL`` reads of
        the scope (scheme, server, path, query string, the first ``Host``), remembered by
        those values: every beacon to one gateway has the same request URL."""
        scope = self.scope
        server = scope.get("server")
        if server is not None and type(server) is not tuple:
            return str(URL(scope=scope))  # not hashable as is (a list): build it
        return _request_url(
            scope.get("scheme", "http"),
            server,
            scope["path"],
            scope.get("query_string", b""),
            self.headers.get(b"host"),
        )

    def cookies(self) -> dict[str, str]:
        """``request.cookies``: every ``Cookie`` header parsed in order, later names win."""
        cookies: dict[str, str] = {}
        for name, value in self.scope["headers"]:
            if name == b"cookie":
                cookies.update(cookie_parser(value.decode("latin-1")))
        return cookies

    def client_host(self) -> str | None:
        """``request.client.host``, or ``None`` without a client address."""
        client = self.scope.get("client")
        return None if client is None else str(client[0])

    async def body(self, limit: int) -> bytes:
        """The body, or 413 (declared or counted over ``limit``) / 400 (client went away)."""
        declared = self.headers.get(b"content-length")
        if declared is not None and int(declared) > limit:  # Gateway refused a bad one
            raise too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.request":
                chunk: bytes = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(limit)
                if not message.get("more_body", False):
                    if not chunks:
                        return chunk
                    chunks.append(chunk)
                    return b"".join(chunks)
                chunks.append(chunk)
            elif message["type"] == "http.disconnect":
                raise ApiError(400, "client_disconnected", "the client closed the request early")


Handler = Callable[[State, Incoming], Awaitable[Answer]]


class GatewayState(State):
    """Starlette's ``State`` (``app.state``), each value also kept as a plain attribute.

    Starlette keeps the values in a dict that its ``__getattr__`` reads, and Python
    calls ``__getattr__`` only after its own look-up has failed, which first builds an
    ``AttributeError`` with a formatted message.  Under callgrind that came to about
    6,000 instructions for each ``state.settings``, ``state.outbox`` ... of a request
    (five of them on an ingest request: 6% of its instructions; bench/ingest_instructions.py).
    Set here, a value is also an entry of the instance's ``__dict__``, where the normal
    look-up finds it at once.  Setting and deleting go through Starlette's methods
    first, so its dict and the attributes hold the same values."""

    def __setattr__(self, key: Any, value: Any) -> None:
        super().__setattr__(key, value)
        self.__dict__[key] = value

    def __delattr__(self, key: Any) -> None:
        super().__delattr__(key)
        self.__dict__.pop(key, None)


class Gateway(Starlette):
    """Starlette, with the ingest routes (``fast_routes``: path to handler, POST only)
    answered by :func:`serve` before the middleware stack."""

    def __init__(
        self, *args: Any, fast_routes: dict[str, Handler], body_limits: dict[str, int], **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.state = GatewayState()
        self.fast_routes = fast_routes
        self.body_limits = body_limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.fast_routes.get(scope["path"])
            if handler is not None:
                scope["app"] = self
                await serve(self, handler, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class FastRoute:
    """A fast-path handler as a Starlette route endpoint (reached only when the app is
    mounted under another router; :class:`Gateway` answers first otherwise)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await serve(scope["app"], self.handler, scope, receive, send)


async def serve(app: Any, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
    started = time.perf_counter()
    status = 0
    incoming = Incoming(scope, receive)
    try:
        try:
            answer = _declared_length_refusal(app, scope["path"], incoming)
            if answer is None:
                answer = await handler(app.state, incoming)
        except ApiError as exc:
            answer = error_answer(exc)
        status = answer.status
        await _send(send, answer)
    except Exception as exc:
        log_unhandled(exc, scope)
        if status == 0:
            status = 500
            failure = ApiError(
                500, "internal_error", "the gateway failed; nothing was acknowledged"
            )
            await _send(send, error_answer(failure))
        raise
    finally:
        log_access(scope, status, started)


def _declared_length_refusal(app: Any, path: str, incoming: Incoming) -> Answer | None:
    """What :class:`~capirelay.server.body_limit.BodyLimitMiddleware` answers before the route."""
    declared = incoming.headers.get(b"content-length")
    if declared is None:
        return None
    try:
        length = int(declared)
    except ValueError:
        return error_answer(bad_content_length())
    limit = app.body_limits.get(path)
    if limit is not None and length > limit:
        return error_answer(BodyTooLarge(limit))
    return None


async def _send(send: Send, answer: Answer) -> None:
    headers = [(b"content-length", str(len(answer.body)).encode()), _JSON, *answer.headers]
    add_security_headers(headers)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
