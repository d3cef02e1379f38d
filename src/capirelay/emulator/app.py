"""The emulator's HTTP surface: a local ``graph.facebook.com`` plus an inspection API.

``create_app(state)`` returns a Starlette app that answers

* ``POST /{version}/{pixel_id}/events`` the way Meta documents it: JSON, urlencoded
  and multipart bodies; ``data`` as objects or as JSON strings (the SDK's sync path);
  the token in the body, the query or an ``Authorization: OAuth|Bearer`` header;
  Graph-shaped errors for a bad token (190), unknown pixel (100/33), a token
  without ``ads_management``/``business_management`` (403, 200), retired
  version (2635), nonsense version (2500), more than 1,000 events (100), and any
  invalid event, which rejects the whole request naming the event's index;
* ``GET /{version}/dataset_quality`` and ``GET [/{version}]/debug_token``;
* the pixel node's settings, ``da_checks`` and ``stats`` (:mod:`capirelay.emulator._pixel`);
* ``/_emulator/...``: inspect accepted events, stats, the request log (never a
  token or a body), register pixels, revoke tokens, narrow their scopes, set their
  expiry, set the clock, inject faults.

A token's ``expires_at`` (0: never, like a system-user token) is compared with the
emulator's clock on every edge that takes a token: once it has passed, Graph's
190/463 ("Session has expired"), and ``debug_token`` reports ``is_valid: false``.

Where Graph's exact wording is not documented, messages follow what Graph is seen
to answer in public issue threads; codes and subcodes follow the reference.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from email.utils import formatdate
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capirelay.emulator._graph import (
    TraceIdHeader,
    batch_handler,
    check_appsecret_proof,
    graph_http_error,
    www_authenticate,
)
from capirelay.emulator._inspect import inspection_routes
from capirelay.emulator._quality import dataset_quality_report
from capirelay.emulator.faults import (
    DEFAULT_INVALID_EVENT_SUBCODE,
    RESPONSE_KINDS,
    Fault,
    FaultKind,
)
from capirelay.emulator.state import EmulatorState
from capirelay.graph.versions import DEFAULT_API_VERSION, version_status
from capirelay.meta_facts import (
    CODE_ACCESS_TOKEN,
    CODE_APP_RATE_LIMIT,
    CODE_INVALID_PARAMETER,
    CODE_PERMISSION_RANGE,
    CODE_RATE_LIMIT,
    CODE_SIGNATURE,
    CODE_UNKNOWN_PATH,
    CODE_USER_RATE_LIMIT,
    CODE_VERSION_DEPRECATED,
    MAX_EVENTS_PER_REQUEST,
)

# The scopes that let a token write to a pixel (send events, change its settings).
WRITE_SCOPES: Final = frozenset({"ads_management", "business_management"})
_SECRET_PARAMS = frozenset({"access_token", "appsecret_proof", "input_token"})
_HTML_ERROR = (
    "<!DOCTYPE html><html><head><title>Error</title></head><body>"
    "<h1>Sorry, something went wrong.</h1><p>We're working on getting this fixed as soon "
    "as we can.</p></body></html>"
)
_THROTTLE_ERRORS: dict[int, tuple[str, int | None]] = {
    CODE_APP_RATE_LIMIT: ("(#4) Application request limit reached", None),
    CODE_USER_RATE_LIMIT: ("(#17) User request limit reached", 2446079),
    CODE_RATE_LIMIT: ("(#613) Calls to this api have exceeded the rate limit.", 1487742),
    80000: ("(#80000) There have been too many calls from this ad-account.", 2446079),
    80003: ("(#80003) There have been too many calls to this ad-account.", 2446079),
    80004: (
        "(#80004) There have been too many calls to this ad-account. Wait a bit and try again.",
        2446079,
    ),
    80014: ("(#80014) There have been too many calls to this ad-account.", 2446079),
}


_GetBuilder = Callable[[EmulatorState, dict[str, Any], str], dict[str, Any]]


class GraphReply(Exception):
    """A Graph error answer, raised anywhere in a handler and rendered once."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        subcode: int | None = None,
        type: str = "OAuthException",  # Graph's own field name
        is_transient: bool = False,
        user_title: str | None = None,
        user_msg: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.subcode = subcode
        self.error: dict[str, Any] = {"message": message, "type": type, "code": code}
        if subcode is not None:
            self.error["error_subcode"] = subcode
        self.error["is_transient"] = is_transient
        if user_title is not None:
            self.error["error_user_title"] = user_title
        if user_msg is not None:
            self.error["error_user_msg"] = user_msg
        self.headers = headers or {}

    def response(self, fbtrace_id: str) -> Response:
        body = orjson.dumps({"error": {**self.error, "fbtrace_id": fbtrace_id}})
        headers = {"x-fb-trace-id": fbtrace_id, **self.headers}
        if self.code == CODE_ACCESS_TOKEN:
            headers.setdefault("www-authenticate", www_authenticate(self.error["message"]))
        return Response(body, self.status, headers=headers, media_type="application/json")


def new_fbtrace_id() -> str:
    return secrets.token_urlsafe(8)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers=headers, media_type="application/json")


# -- request parsing ----------------------------------------------------------


async def read_params(request: Request) -> dict[str, Any]:
    """Query parameters overlaid by the body's (JSON, urlencoded or multipart)."""
    params: dict[str, Any] = dict(request.query_params)
    body = await request.body()
    if not body:
        return params
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    elif media_type == "multipart/form-data":
        params.update(_parse_multipart(content_type, body))
    else:
        params.update(_parse_json_object(body))
    return params


def _parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise GraphReply(
            400, CODE_INVALID_PARAMETER, "(#100) The request body is not valid JSON"
        ) from None
    if not isinstance(parsed, dict):
        raise GraphReply(
            400, CODE_INVALID_PARAMETER, "(#100) The request body must be a JSON object"
        )
    return parsed


def _parse_multipart(content_type: str, body: bytes) -> dict[str, str]:
    # The stdlib MIME parser handles form-data fine and spares a dependency.
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise GraphReply(400, CODE_INVALID_PARAMETER, "(#100) Malformed multipart body")
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode("utf-8", "replace")
    return fields


def find_token(request: Request, params: dict[str, Any]) -> str | None:
    token = params.get("access_token")
    if isinstance(token, str) and token:
        return token
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("oauth", "bearer") and credentials.strip():
        return credentials.strip()
    return None


def decode_data(value: Any) -> list[dict[str, Any]]:
    """``data`` as a list of event objects, whichever of Graph's encodings was used."""
    if value is None or value == "":
        raise GraphReply(400, CODE_INVALID_PARAMETER, "(#100) The parameter data is required")
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise GraphReply(
                400, CODE_INVALID_PARAMETER, "(#100) param data must be an array."
            ) from None
    if not isinstance(value, list):
        raise GraphReply(400, CODE_INVALID_PARAMETER, "(#100) param data must be an array.")
    events: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        event = item
        if isinstance(item, str):
            try:
                event = orjson.loads(item)
            except orjson.JSONDecodeError:
                event = None
        if not isinstance(event, dict):
            raise GraphReply(
                400,
                CODE_INVALID_PARAMETER,
                "(#100) param data must be an array of objects or JSON-encoded strings.",
                user_title="Invalid event",
                user_msg=f"Event {index}: is not a JSON object.",
            )
        events.append(event)
    return events


# -- the Graph edges --------------------------------------------------------------


def check_version(state: EmulatorState, version: str) -> None:
    status = version_status(version, state.today())
    if status.state == "expired":
        raise GraphReply(
            400,
            CODE_VERSION_DEPRECATED,
            f"(#2635) You are calling a deprecated version of the Ads API. Please update to "
            f"the latest version: {DEFAULT_API_VERSION}.",
        )
    if status.state == "unknown":
        raise GraphReply(400, CODE_UNKNOWN_PATH, f"Unknown path components: /{version}")


def check_token(state: EmulatorState, token: str | None, revoked_by_fault: bool) -> None:
    if token is None:
        raise GraphReply(
            400, CODE_SIGNATURE, "An access token is required to request this resource."
        )
    record = state.token(token)
    if record is None:
        raise GraphReply(
            400, CODE_ACCESS_TOKEN, "Invalid OAuth access token - Cannot parse access token"
        )
    if record.revoked or revoked_by_fault:
        raise GraphReply(
            400,
            CODE_ACCESS_TOKEN,
            "Error validating access token: The session has been invalidated or has expired.",
            subcode=463,
        )
    if state.is_expired(record):
        raise GraphReply(
            400, CODE_ACCESS_TOKEN, expired_message(state, record.expires_at), subcode=463
        )


def expired_message(state: EmulatorState, expires_at: int) -> str:
    """Graph's wording for a token whose ``expires_at`` has passed (code 190, subcode 463)."""
    return (
        f"Error validating access token: Session has expired on {_graph_time(expires_at)}. "
        f"The current time is {_graph_time(state.now())}."
    )


def _graph_time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%A, %d-%b-%y %H:%M:%S UTC")


def check_proof(state: EmulatorState, token: str, params: dict[str, Any]) -> None:
    if not check_appsecret_proof(state, token, params):
        raise GraphReply(
            400,
            CODE_INVALID_PARAMETER,
            "Invalid appsecret_proof provided in the API argument",
            type="GraphMethodException",
        )


def check_pixel(state: EmulatorState, token: str, pixel_id: str) -> None:
    if not state.can_access(token, pixel_id):
        raise GraphReply(
            400,
            CODE_INVALID_PARAMETER,
            f"Unsupported post request. Object with ID '{pixel_id}' does not exist, cannot be "
            "loaded due to missing permissions, or does not support this operation.",
            subcode=33,
            type="GraphMethodException",
        )


def check_write_scope(state: EmulatorState, token: str, action: str) -> None:
    """Refuse a token without ``ads_management``/``business_management`` as Graph does.

    Sending events and changing a pixel's settings both write to the pixel; a token
    that may only read (``ads_read``) gets Graph's permission error, code 200
    (reference §4.9: 10 and 200-299 are permission errors, not retried).
    """
    record = state.token(token)
    if record is None or not WRITE_SCOPES & set(record.scopes):
        raise GraphReply(
            403,
            CODE_PERMISSION_RANGE[0],
            "(#200) Permissions error",
            type="OAuthException",
            user_title="Permissions error",
            user_msg=f"The user or system user this token belongs to cannot {action} this "
            "pixel: it needs ads_management (or business_management). Assign it to the "
            "dataset with full control in Business Settings.",
        )


def validate_events(state: EmulatorState, pixel_id: str, events: list[dict[str, Any]]) -> None:
    """Reject the whole request at the first invalid event, as Meta does."""
    now = state.now()
    injected = {str(f.event_id): f for f in state.faults.peek(FaultKind.INVALID_EVENT, pixel_id)}
    for index, event in enumerate(events):
        if injected:
            _raise_injected_invalid(state, injected, index, event)
        for problem in state.validator(event, now):
            if problem.is_error:
                raise GraphReply(
                    400,
                    CODE_INVALID_PARAMETER,
                    "Invalid parameter",
                    subcode=state.meta_subcodes.get(problem.code, DEFAULT_INVALID_EVENT_SUBCODE),
                    user_title=problem.code.replace("_", " ").capitalize(),
                    user_msg=f"Event {index}: {problem.message}",
                )


def _raise_injected_invalid(
    state: EmulatorState, injected: dict[str, Fault], index: int, event: dict[str, Any]
) -> None:
    fault = injected.get(str(event.get("event_id")))
    if fault is not None and state.faults.consume(fault):
        raise GraphReply(
            400,
            CODE_INVALID_PARAMETER,
            fault.message or "Invalid parameter",
            subcode=fault.subcode or DEFAULT_INVALID_EVENT_SUBCODE,
            user_title="Invalid event (injected)",
            user_msg=f"Event {index}: rejected by an injected emulator fault.",
        )


async def apply_request_faults(
    state: EmulatorState, request: Request, pixel_id: str
) -> GraphReply | Response | None:
    """Latency first, then a hang, then a canned failure; None lets the request through."""
    if not state.faults:
        return None
    for fault in state.faults.take(frozenset({FaultKind.LATENCY}), pixel_id):
        await asyncio.sleep(state.faults.latency_seconds(fault))
    for fault in state.faults.take(frozenset({FaultKind.TIMEOUT}), pixel_id, first_only=True):
        await _hang(request, fault.seconds if fault.seconds is not None else 30.0)
        return HTMLResponse(_HTML_ERROR, 504)
    for fault in state.faults.take(RESPONSE_KINDS, pixel_id, first_only=True):
        return _canned_failure(fault, pixel_id)
    return None


async def _hang(request: Request, seconds: float) -> None:
    # Polls for the client going away, so a hung request ends when the client's
    # timeout fires and shutdown is not held up by it.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        if await request.is_disconnected():
            return


def _canned_failure(fault: Fault, pixel_id: str) -> GraphReply | Response:
    if fault.kind is FaultKind.THROTTLE:
        return throttle_reply(fault, pixel_id)
    if fault.kind is FaultKind.GRAPH_ERROR:
        assert fault.code is not None  # checked by parse_fault
        return GraphReply(
            fault.status or 400,
            fault.code,
            fault.message or f"(#{fault.code}) Injected error",
            subcode=fault.subcode,
            is_transient=bool(fault.is_transient),
        )
    status = fault.status or 500
    if status == 500:
        return GraphReply(
            500,
            2,
            "An unexpected error has occurred. Please retry your request later.",
            is_transient=True,
        )
    return HTMLResponse(_HTML_ERROR, status)


def throttle_reply(fault: Fault, pixel_id: str) -> GraphReply:
    code = fault.code or 80004
    message, subcode = _THROTTLE_ERRORS[code]
    regain = fault.regain_minutes if fault.regain_minutes is not None else 1
    usage = {"call_count": 100, "total_cputime": 100, "total_time": 100}
    headers = {
        "x-business-use-case-usage": orjson.dumps(
            {
                pixel_id: [
                    {"type": "ads_management", **usage, "estimated_time_to_regain_access": regain}
                ]
            }
        ).decode(),
        "x-app-usage": orjson.dumps(usage).decode(),
    }
    if fault.retry_after is not None:
        headers["retry-after"] = str(int(fault.retry_after))
    return GraphReply(400, code, message, subcode=subcode, is_transient=True, headers=headers)


def _revoked_by_fault(state: EmulatorState, pixel_id: str, token: str | None) -> bool:
    if not state.faults:
        return False
    revoked = state.faults.take(
        frozenset({FaultKind.TOKEN_REVOKED}), pixel_id, first_only=True, token=token
    )
    return bool(revoked)


def create_app(state: EmulatorState | None = None) -> Starlette:
    """The emulator app over ``state`` (a fresh, empty state when omitted)."""
    state = state or EmulatorState()

    async def post_events(request: Request) -> Response:
        started = time.perf_counter()
        fbtrace_id = new_fbtrace_id()
        version = request.path_params["version"]
        pixel_id = request.path_params["pixel_id"]
        log: dict[str, Any] = {
            "method": "POST",
            "path": request.url.path,
            "query": secret_free_query(request),
            "pixel_id": pixel_id,
        }
        try:
            response = await _events_response(request, version, pixel_id, log, fbtrace_id)
        except GraphReply as reply:
            response = reply.response(fbtrace_id)
            log["error_code"] = reply.code
            log["error_subcode"] = reply.subcode
        log.update(
            status=response.status_code,
            fbtrace_id=fbtrace_id,
            at=state.now(),
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        state.record_request(log)
        return response

    async def _events_response(
        request: Request, version: str, pixel_id: str, log: dict[str, Any], fbtrace_id: str
    ) -> Response:
        injected = await apply_request_faults(state, request, pixel_id)
        if isinstance(injected, GraphReply):
            raise injected
        if injected is not None:
            log["error_code"] = f"http_{injected.status_code}"
            return injected
        check_version(state, version)
        params = await read_params(request)
        log["body"] = _body_kind(request)
        token = find_token(request, params)
        check_token(state, token, _revoked_by_fault(state, pixel_id, token))
        assert token is not None
        check_proof(state, token, params)
        check_pixel(state, token, pixel_id)
        check_write_scope(state, token, "send events to")
        events = decode_data(params.get("data"))
        log["events"] = len(events)
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise GraphReply(
                400,
                CODE_INVALID_PARAMETER,
                "Invalid parameter",
                user_title="Too many events",
                user_msg=f"You can send up to {MAX_EVENTS_PER_REQUEST} events in data; "
                f"this request had {len(events)}.",
            )
        validate_events(state, pixel_id, events)
        test_event_code = params.get("test_event_code") or None
        log["test_event_code"] = test_event_code
        counted = not state.faults.take(frozenset({FaultKind.UNCOUNTED}), pixel_id)
        received = state.accept(pixel_id, events, test_event_code, counted=counted)
        return _json(
            {"events_received": received, "messages": [], "fbtrace_id": fbtrace_id},
            headers={"x-fb-trace-id": fbtrace_id},
        )

    async def dataset_quality(request: Request) -> Response:
        return await _authorized_get(request, _dataset_quality_body)

    async def debug_token(request: Request) -> Response:
        return await _authorized_get(request, _debug_token_body)

    async def _authorized_get(request: Request, build: _GetBuilder) -> Response:
        fbtrace_id = new_fbtrace_id()
        log: dict[str, Any] = {
            "method": "GET",
            "path": request.url.path,
            "query": secret_free_query(request),
        }
        try:
            version = request.path_params.get("version")
            if version is not None:
                check_version(state, version)
            params = dict(request.query_params)
            token = find_token(request, params)
            check_token(state, token, False)
            assert token is not None
            check_proof(state, token, params)
            response = _json(build(state, params, token), headers={"x-fb-trace-id": fbtrace_id})
        except GraphReply as reply:
            response = reply.response(fbtrace_id)
            log["error_code"] = reply.code
        log.update(status=response.status_code, fbtrace_id=fbtrace_id, at=state.now())
        state.record_request(log)
        return response

    from capirelay.emulator._pixel import pixel_routes  # it imports this module's helpers

    pixel_inspection, pixel_graph = pixel_routes(state)
    routes = [
        *inspection_routes(state),
        *pixel_inspection,
        Route("/debug_token", debug_token, methods=["GET"]),
        Route("/{version}/debug_token", debug_token, methods=["GET"]),
        Route("/{version}/dataset_quality", dataset_quality, methods=["GET"]),
        Route("/{version}/{pixel_id}/events", post_events, methods=["POST"]),
        *pixel_graph,
        Route("/{version}/", batch_handler, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(ClockDateHeader, state=state), Middleware(TraceIdHeader)],
        exception_handlers={404: graph_http_error, 405: graph_http_error},
    )
    app.state.emulator = state
    return app


class ClockDateHeader:
    """Stamp every answer's ``Date`` header from the emulator's clock, as Graph does from its own.

    Lets clock-skew checks run against a frozen or shifted emulator clock; servers
    running the app turn their own ``Date`` header off so there is only one.
    """

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                headers.append((b"date", formatdate(self.state.now(), usegmt=True).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_dated)


def _body_kind(request: Request) -> str:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return {
        "application/x-www-form-urlencoded": "form",
        "multipart/form-data": "multipart",
    }.get(media_type, "json")


def _debug_token_body(
    state: EmulatorState, params: dict[str, Any], access_token: str
) -> dict[str, Any]:
    input_token = params.get("input_token")
    if not isinstance(input_token, str) or not input_token:
        raise GraphReply(
            400, CODE_INVALID_PARAMETER, "(#100) The parameter input_token is required"
        )
    record = state.token(input_token)
    if record is None:
        return {
            "data": {
                "error": {"code": CODE_ACCESS_TOKEN, "message": "Invalid OAuth access token."},
                "is_valid": False,
                "scopes": [],
            }
        }
    expired = state.is_expired(record)
    data: dict[str, Any] = {
        "app_id": "1000000000000001",
        "type": "SYSTEM_USER",
        "application": "capirelay emulator",
        "is_valid": not record.revoked and not expired,
        "expires_at": record.expires_at,
        "data_access_expires_at": 0,
        "scopes": list(record.scopes),
        "granular_scopes": [
            {"scope": scope, "target_ids": sorted(record.pixels)} for scope in record.scopes
        ],
    }
    if expired:
        # As Graph's debug_token reports an expired token: the error inside data.
        data["error"] = {
            "code": CODE_ACCESS_TOKEN,
            "message": expired_message(state, record.expires_at),
            "subcode": 463,
        }
    return {"data": data}


def _dataset_quality_body(
    state: EmulatorState, params: dict[str, Any], access_token: str
) -> dict[str, Any]:
    dataset_id = params.get("dataset_id")
    if not isinstance(dataset_id, str) or not dataset_id:
        raise GraphReply(400, CODE_INVALID_PARAMETER, "(#100) The parameter dataset_id is required")
    check_pixel(state, access_token, dataset_id)
    return dataset_quality_report(state, dataset_id)


def secret_free_query(request: Request) -> dict[str, str]:
    """The query without tokens or proofs, for the request log."""
    return {k: v for k, v in request.query_params.items() if k not in _SECRET_PARAMS}
