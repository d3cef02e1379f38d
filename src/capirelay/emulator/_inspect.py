"""The emulator's own API under ``/_emulator``: inspect, register, revoke, break things.

This is what tests, the demo and users' CI talk to instead of Events Manager:
the accepted events per pixel (with ``test_event_code`` and the ``deduplicated``
flag), counters, the recent request log (no tokens, no bodies), pixel and token
management (revoke, restore, ``POST /_emulator/tokens/expiry``), the clock, and
fault injection.  It never returns a token.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from capirelay.emulator.faults import parse_fault
from capirelay.emulator.state import EmulatorState


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _bad_request(message: str) -> Response:
    return _json({"error": {"message": message}}, 400)


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body:
        return {}
    parsed = orjson.loads(body)
    if not isinstance(parsed, dict):
        raise ValueError("body must be a JSON object")
    return parsed


def _optional_int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise ValueError(f"{name} must be a non-negative integer")
    return int(value)


def _optional_bool(value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    return value.lower() in ("1", "true", "yes")


def inspection_routes(state: EmulatorState) -> list[BaseRoute]:
    async def list_events(request: Request) -> Response:
        query = request.query_params
        try:
            limit = _optional_int(query.get("limit"), "limit")
        except ValueError as exc:
            return _bad_request(str(exc))
        events = state.events(
            request.path_params["pixel_id"],
            test_event_code=query.get("test_event_code") or None,
            event_name=query.get("event_name") or None,
            deduplicated=_optional_bool(query.get("deduplicated")),
            limit=limit,
        )
        return _json({"data": events, "count": len(events)})

    async def pixels(request: Request) -> Response:
        if request.method == "GET":
            return _json({"data": state.pixels()})
        try:
            body = await _json_body(request)
        except (ValueError, orjson.JSONDecodeError) as exc:
            return _bad_request(str(exc))
        pixel_id, token = str(body.get("pixel_id", "")), body.get("access_token")
        if not pixel_id.isdigit() or not isinstance(token, str) or not token:
            return _bad_request("send {'pixel_id': digits, 'access_token': non-empty string}")
        state.register_pixel(pixel_id, token)
        return _json({"pixel_id": pixel_id}, 201)

    async def revoke(request: Request) -> Response:
        return await _token_change(request, state.revoke_token)

    async def restore(request: Request) -> Response:
        return await _token_change(request, state.restore_token)

    async def expiry(request: Request) -> Response:
        try:
            body = await _json_body(request)
            token, expires_at = _expiry_of(body, state.now())
        except (ValueError, orjson.JSONDecodeError) as exc:
            return _bad_request(str(exc))
        if not state.set_token_expiry(token, expires_at):
            return _json({"error": {"message": "unknown token"}}, 404)
        record = state.token(token)
        assert record is not None
        return _json({"expires_at": record.expires_at, "expired": state.is_expired(record)})

    async def stats(request: Request) -> Response:
        return _json(state.stats())

    async def requests(request: Request) -> Response:
        try:
            limit = _optional_int(request.query_params.get("limit"), "limit")
        except ValueError as exc:
            return _bad_request(str(exc))
        return _json({"data": state.request_log(limit)})

    async def reset(request: Request) -> Response:
        state.reset()
        return _json({"reset": True})

    async def clock(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await _json_body(request)
            except (ValueError, orjson.JSONDecodeError) as exc:
                return _bad_request(str(exc))
            now = body.get("now")
            if now is not None and (isinstance(now, bool) or not isinstance(now, int | float)):
                return _bad_request("now must be a Unix timestamp or null (real time)")
            state.set_clock(now)
        return _json({"now": state.now(), "today": state.today().isoformat()})

    async def faults(request: Request) -> Response:
        if request.method == "DELETE":
            return _json({"cleared": state.faults.clear()})
        if request.method == "GET":
            return _json({"data": [f.to_dict() for f in state.faults.active()]})
        try:
            body = await _json_body(request)
            specs = body.get("faults", [body])
            if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
                raise ValueError("faults must be a list of objects")
            parsed = [parse_fault(spec) for spec in specs]
        except (ValueError, orjson.JSONDecodeError) as exc:
            return _bad_request(str(exc))
        added = [state.faults.add(fault).to_dict() for fault in parsed]
        return _json({"data": added}, 201)

    return [
        Route("/_emulator/pixels/{pixel_id}/events", list_events, methods=["GET"]),
        Route("/_emulator/pixels", pixels, methods=["GET", "POST"]),
        Route("/_emulator/tokens/revoke", revoke, methods=["POST"]),
        Route("/_emulator/tokens/restore", restore, methods=["POST"]),
        Route("/_emulator/tokens/expiry", expiry, methods=["POST"]),
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/requests", requests, methods=["GET"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
        Route("/_emulator/clock", clock, methods=["GET", "POST"]),
        Route("/_emulator/faults", faults, methods=["GET", "POST", "DELETE"]),
    ]


async def _token_change(request: Request, change: Any) -> Response:
    try:
        body = await _json_body(request)
    except (ValueError, orjson.JSONDecodeError) as exc:
        return _bad_request(str(exc))
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        return _bad_request("send {'access_token': the token to change}")
    if not change(token):
        return _json({"error": {"message": "unknown token"}}, 404)
    return _json({"ok": True})


_EXPIRY_USAGE = (
    "send {'access_token', 'expires_at': Unix seconds (0 or null: never)} or "
    "{'access_token', 'expires_in': seconds from the emulator's clock (0 or less: expired now)}"
)


def _expiry_of(body: dict[str, Any], now: float) -> tuple[str, int]:
    """(token, expires_at) from an expiry request's body; ValueError names the mistake."""
    token = body.get("access_token")
    if not isinstance(token, str) or not token or ("expires_at" in body) == ("expires_in" in body):
        raise ValueError(_EXPIRY_USAGE)
    if "expires_at" in body:
        value = body["expires_at"]
        if value is None:
            return token, 0
        if not _is_number(value) or value < 0:
            raise ValueError(_EXPIRY_USAGE)
        return token, int(value)
    value = body["expires_in"]
    if not _is_number(value):
        raise ValueError(_EXPIRY_USAGE)
    # At least 1: 0 means "never", and a token told to expire now has expired.
    return token, max(1, int(now + value))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
