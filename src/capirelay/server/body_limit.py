"""One request body limit for every route, before any route reads a byte.

:class:`BodyLimitMiddleware` wraps the whole app: a declared ``Content-Length``
over the route's limit is answered 413 without calling the route, and a body
sent without one (chunked) is counted as it streams in and cut off with 413 the
moment it passes the limit.  No route, including the dashboard's login form,
can buffer more than its limit, whoever calls it (authenticated or not).

The limits, in one table (:func:`body_limit`): ``/v1/events`` and the webhooks
take ``max_body_bytes`` (up to 1,000 events), ``/v1/collect`` takes
``max_collect_body_bytes`` (one browser event), everything else (the dashboard's
forms, ``GET`` routes) :data:`SMALL_BODY_BYTES`.  Routes keep reading through
:func:`capirelay.server.http.read_body`, which applies the same limit again.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capirelay.config import Settings
from capirelay.server.http import ApiError, bad_content_length

__all__ = ["SMALL_BODY_BYTES", "BodyLimitMiddleware", "body_limit"]

# A login or DLQ form is a few hundred bytes; 16 KiB leaves room and bounds a flood.
SMALL_BODY_BYTES = 16 * 1024

_EVENT_PREFIXES = ("/v1/events", "/v1/webhooks/")


def body_limit(path: str, settings: Settings) -> int:
    """The most body bytes a request to ``path`` may carry."""
    if path == "/v1/collect":
        return settings.max_collect_body_bytes
    if path == "/v1/events" or path.startswith(_EVENT_PREFIXES):
        return settings.max_body_bytes
    return SMALL_BODY_BYTES


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            "body_too_large",
            f"request body is larger than the {limit}-byte limit of this endpoint; "
            "send less per request (max_body_bytes / max_collect_body_bytes in the config)",
            headers={"Connection": "close"},
        )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["path"], self.settings)
        declared = _declared_length(scope)
        if declared == -1:
            await bad_content_length().response()(scope, receive, send)
            return
        if declared is not None and declared > limit and not _answers_itself(scope):
            await BodyTooLarge(limit).response()(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:
            # A route that swallowed nothing lets it propagate: answer here if nobody has.
            if started:
                raise
            await exc.response()(scope, receive, send)


def _answers_itself(scope: Scope) -> bool:
    """The beacon checks the declared length itself before reading (``read_body``), so its
    413 carries the CORS headers a browser needs to read it."""
    return scope["path"] == "/v1/collect" and scope["method"] == "POST"


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None
