"""What makes the emulator answer like Graph beyond the events edge.

* ``POST /{version}/`` with ``batch``: Graph's batch API, which the official
  SDK's ``api.new_batch()`` uses.  Each sub-request (``method``,
  ``relative_url``, urlencoded ``body``, optional ``headers``) is run through
  this same app, in order, with the batch's access token and
  ``appsecret_proof`` when it carries none of its own; the answer is one
  ``{"code", "headers", "body"}`` per sub-request, ``body`` a JSON string.
  At most 50 sub-requests, as Graph.
* JSON error objects for unknown paths (``Unknown path components``, code
  2500) and unsupported methods (``Unsupported get request``, code 100,
  ``GraphMethodException``): Graph never answers plain text.
* ``appsecret_proof``: when the emulator knows the app secret (``app_secret``
  of :class:`EmulatorState`), a given proof must be the hex HMAC-SHA256 of the
  access token keyed with it (compared in constant time), else code 100
  ``Invalid appsecret_proof provided in the API argument``.  Without a known
  secret, proofs are not checked (an app that does not require them).
* ``x-fb-trace-id`` on every answer (the same id as the body's ``fbtrace_id``
  where there is one) and ``WWW-Authenticate`` on code 190, as Graph sends.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capirelay.emulator.state import EmulatorState
from capirelay.meta_facts import (
    CODE_INVALID_PARAMETER,
    CODE_SERVICE,
    CODE_UNKNOWN_PATH,
)

__all__ = [
    "MAX_BATCH",
    "TraceIdHeader",
    "appsecret_proof",
    "batch_handler",
    "check_appsecret_proof",
    "graph_http_error",
    "www_authenticate",
]

MAX_BATCH = 50
_INTERNAL_BASE = "http://graph.emulator.internal"
# Hop-by-hop or recomputed headers a sub-answer does not carry into the batch body.
_SKIPPED_HEADERS = frozenset({"content-length", "date", "transfer-encoding", "connection"})


def _error(status: int, error: dict[str, Any], fbtrace_id: str) -> Response:
    body = orjson.dumps({"error": {**error, "fbtrace_id": fbtrace_id}})
    return Response(
        body, status, headers={"x-fb-trace-id": fbtrace_id}, media_type="application/json"
    )


def _new_trace_id() -> str:
    from capirelay.emulator.app import new_fbtrace_id  # one definition of the id's shape

    return new_fbtrace_id()


def appsecret_proof(app_secret: str, access_token: str) -> str:
    """Graph's proof: hex HMAC-SHA256 of the access token keyed with the app secret."""
    return hmac.new(app_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()


def check_appsecret_proof(state: EmulatorState, token: str, params: dict[str, Any]) -> bool:
    """False when the emulator knows the app secret and a given proof does not match it."""
    proof = params.get("appsecret_proof")
    if state.app_secret is None or proof is None:
        return True
    expected = appsecret_proof(state.app_secret, token)
    return isinstance(proof, str) and hmac.compare_digest(proof.lower(), expected)


def www_authenticate(message: str) -> str:
    """Graph's challenge on an invalid token (code 190)."""
    quoted = message.replace("\\", "\\\\").replace('"', '\\"')
    return f'OAuth "Facebook Platform" "invalid_token" "{quoted}"'


async def graph_http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and unsupported methods, answered as Graph does: a JSON error object."""
    fbtrace_id = _new_trace_id()
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 405:
        method = request.method.lower()
        error = {
            "message": f"Unsupported {method} request.",
            "type": "GraphMethodException",
            "code": CODE_INVALID_PARAMETER,
            "is_transient": False,
        }
        return _error(400, error, fbtrace_id)
    if status == 404:
        error = {
            "message": f"Unknown path components: {request.url.path}",
            "type": "OAuthException",
            "code": CODE_UNKNOWN_PATH,
            "is_transient": False,
        }
        return _error(400, error, fbtrace_id)
    error = {
        "message": "An unexpected error has occurred. Please retry your request later.",
        "type": "OAuthException",
        "code": CODE_SERVICE,
        "is_transient": True,
    }
    return _error(500, error, fbtrace_id)


class TraceIdHeader:
    """Give every answer an ``x-fb-trace-id`` (handlers that made one keep theirs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-fb-trace-id" for name, _ in headers):
                    headers.append((b"x-fb-trace-id", _new_trace_id().encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_traced)


def _batch_error(message: str, code: int = 100) -> Response:
    error = {"message": message, "type": "OAuthException", "code": code, "is_transient": False}
    return _error(400, error, _new_trace_id())


def _parse_batch(value: Any) -> list[dict[str, Any]] | str:
    """The batch's sub-requests, or the error message for a malformed one."""
    if value is None or value == "":
        return "(#100) The parameter batch is required"
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return "(#100) param batch must be a JSON array of requests"
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        return "(#100) param batch must be a JSON array of requests"
    return value


def _sub_request(
    item: dict[str, Any], version: str, token: str | None, proof: str | None
) -> tuple[str, str, bytes, dict[str, str]] | str:
    method = str(item.get("method", "GET")).upper()
    relative_url = item.get("relative_url")
    if not isinstance(relative_url, str) or not relative_url.strip():
        return "(#100) Each batch request needs a relative_url"
    path = relative_url.strip().lstrip("/")
    if not path.startswith("v") or "/" not in path or not path.split("/", 1)[0][1:2].isdigit():
        path = f"{version}/{path}"
    body = item.get("body") or ""
    if not isinstance(body, str):
        body = urlencode(body) if isinstance(body, dict) else ""
    extra = {}
    fields = body + "&" + path.partition("?")[2]
    if token is not None and "access_token=" not in fields:
        extra["access_token"] = token
    if proof is not None and "appsecret_proof=" not in fields:
        extra["appsecret_proof"] = proof
    headers = {"content-type": "application/x-www-form-urlencoded"}
    for header in item.get("headers") or []:
        if isinstance(header, dict) and isinstance(header.get("name"), str):
            headers[header["name"].lower()] = str(header.get("value", ""))
    if method in ("GET", "DELETE"):
        if extra:
            path += ("&" if "?" in path else "?") + urlencode(extra)
        return method, "/" + path, b"", headers
    if extra:
        body = "&".join(part for part in (body, urlencode(extra)) if part)
    return method, "/" + path, body.encode(), headers


async def batch_handler(request: Request) -> Response:
    """``POST /{version}/`` with ``batch``: every sub-request through this app, in order."""
    from capirelay.emulator.app import GraphReply, check_version, find_token, read_params

    state: EmulatorState = request.app.state.emulator
    version = request.path_params.get("version", "")
    try:
        check_version(state, version)
        params = await read_params(request)
    except GraphReply as reply:
        return reply.response(_new_trace_id())
    batch = _parse_batch(params.get("batch"))
    if isinstance(batch, str):
        return _batch_error(batch)
    if len(batch) > MAX_BATCH:
        return _batch_error(
            f"(#1) Too many requests in batch message. Maximum batch size is {MAX_BATCH}", code=1
        )
    token = find_token(request, params)
    proof = params.get("appsecret_proof")
    answers: list[dict[str, Any] | None] = []
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(transport=transport, base_url=_INTERNAL_BASE) as client:
        for item in batch:
            sub = _sub_request(item, version, token, proof if isinstance(proof, str) else None)
            if isinstance(sub, str):
                answers.append(_answer_of(_batch_error(sub)))
                continue
            method, path, body, headers = sub
            response = await client.request(method, path, content=body, headers=headers)
            answers.append(
                {
                    "code": response.status_code,
                    "headers": [
                        {"name": name, "value": value}
                        for name, value in response.headers.items()
                        if name.lower() not in _SKIPPED_HEADERS
                    ],
                    "body": response.text,
                }
            )
    return Response(orjson.dumps(answers), 200, media_type="application/json")


def _answer_of(response: Response) -> dict[str, Any]:
    return {
        "code": response.status_code,
        "headers": [{"name": "Content-Type", "value": "application/json"}],
        "body": bytes(response.body).decode(),
    }
