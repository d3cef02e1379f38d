"""HTTP plumbing shared by the routes: JSON responses, the error shape, bounded body reads.

Every client error leaves the gateway as ``{"error": {"code", "message"}}``
with a message that names the field and the fix; :class:`ApiError` is how a
route says so.  Bodies are read while counting bytes, so a client cannot make
the gateway buffer more than the configured limit (a declared
``Content-Length`` over the limit is refused before a single body byte is
read).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

__all__ = [
    "ApiError",
    "JSONResponse",
    "bad_content_length",
    "error_response",
    "parse_json",
    "read_body",
    "too_large",
]


class JSONResponse(Response):
    """orjson-encoded JSON; several times faster than the stdlib encoder on large results."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    """A request the gateway refuses, as an HTTP status and a stable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self, extra_headers: Mapping[str, str] | None = None) -> JSONResponse:
        return error_response(
            self.status, self.code, self.message, headers={**self.headers, **(extra_headers or {})}
        )


def error_response(
    status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def bad_content_length() -> ApiError:
    return ApiError(400, "bad_content_length", "Content-Length must be an integer")


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "body_too_large",
        f"request body is larger than the {limit}-byte limit; send fewer events per request "
        "(max_body_bytes / max_collect_body_bytes in the config)",
        headers={"Connection": "close"},
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or :class:`ApiError` 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large(limit)
        except ValueError:
            raise bad_content_length() from None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the request early") from None
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if exc.msg in _SURROGATE_ERRORS:
            return _parse_with_lone_surrogates(body)
        # orjson checks the encoding of the whole body first, and says "str is not valid
        # UTF-8: surrogates not allowed at 0" of any byte that is not UTF-8, wherever it
        # is: the first such byte, named by its offset (never the byte itself), is what
        # the sender needs (a Latin-1 "é" in one event of a batch, typically).
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise ApiError(
                400,
                "malformed_json",
                f"the request body is not valid UTF-8 at byte {bad.start}; "
                "send JSON encoded as UTF-8",
            ) from None
        # The decoder's message gives line/column only, never the offending bytes.
        raise ApiError(
            400, "malformed_json", f"the request body is not valid JSON ({exc.msg} at {exc.pos})"
        ) from None


# orjson refuses a whole body for one "\ud83c" escape without its pair (JavaScript's
# JSON.stringify of a string cut mid-emoji writes one): such a string is the field's
# problem, not the request's, so the body is read again by a parser that keeps it.
_SURROGATE_ERRORS: Final = frozenset(
    {
        "no low surrogate in string",
        "invalid low surrogate in string",
        "invalid high surrogate in string",
    }
)


def _parse_with_lone_surrogates(body: bytes) -> Any:
    """``body`` parsed as orjson would, except that a lone surrogate escape is kept in its
    string (for the event's checks to refuse that field): the stdlib parser, made as
    strict as orjson (no NaN or Infinity, no number that overflows to infinity)."""
    text = body.decode("utf-8")  # orjson checks the encoding before it reads any string
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, "malformed_json", f"the request body is not valid JSON ({exc.msg} at {exc.pos})"
        ) from None
    except RecursionError:
        raise ApiError(
            400, "malformed_json", "the request body is not valid JSON (depth limit exceeded)"
        ) from None
    except ValueError as exc:  # the hooks below, or an integer past Python's 4300 digits
        reason = exc.args[0] if isinstance(exc, _NotJSON) else "a number too long to read"
        raise ApiError(
            400, "malformed_json", f"the request body is not valid JSON ({reason})"
        ) from None


class _NotJSON(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON number; send finite numbers")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise _NotJSON("a number is infinity when parsed as a double; send finite numbers")
    return number
