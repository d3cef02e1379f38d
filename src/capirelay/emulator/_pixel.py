"""The pixel node and its diagnostics edges, as ``docs/reference/meta-diagnostics.md`` writes them.

* ``GET /{v}/{pixel_id}?fields=…``: ``enable_automatic_matching``,
  ``automatic_matching_fields``, ``first_party_cookie_status`` (and ``id``, ``name``);
* ``POST /{v}/{pixel_id}``: writes them; a token without ``ads_management`` or
  ``business_management`` gets Graph's ``(#200) Permissions error``
  (:func:`~capirelay.emulator.app.check_write_scope`, which ``/events`` applies too);
* ``GET /{v}/{pixel_id}/da_checks``: every check ``passed`` unless a
  ``da_check_failed`` fault names it;
* ``GET /{v}/{pixel_id}/stats``: hourly buckets of what the emulator received;
* ``POST /_emulator/pixels/{pixel_id}/browser_events`` (simulated Pixel fires) and
  ``POST /_emulator/tokens/scopes`` (give a token fewer permissions).
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from capirelay.emulator.app import (
    GraphReply,
    check_pixel,
    check_token,
    check_version,
    check_write_scope,
    find_token,
    new_fbtrace_id,
    read_params,
    secret_free_query,
)
from capirelay.emulator.faults import FaultKind
from capirelay.emulator.state import EmulatorState
from capirelay.meta_facts import (
    CODE_INVALID_PARAMETER,
    CODE_UNKNOWN_PATH,
)

AAM_FIELDS: Final = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id")
COOKIE_STATUSES: Final = ("FIRST_PARTY_COOKIE_ENABLED", "FIRST_PARTY_COOKIE_DISABLED", "EMPTY")
AGGREGATIONS: Final = frozenset(
    {
        "browser_type", "custom_data_field", "device_os", "device_type", "event",
        "event_detection_method", "event_processing_results", "event_source",
        "event_total_counts", "event_value_count", "had_pii", "host", "match_keys",
        "pixel_fire", "url", "url_by_rule",
    }
)  # fmt: skip
STATS_LOOKBACK = 7 * 24 * 3600
# The checks Meta's reference lists as valid values of ``checks``.
DA_CHECKS: Final[dict[str, tuple[str, str]]] = {
    "pixel_missing_param_in_events": (
        "Events are missing parameters",
        "Some events received from this connection are missing parameters that Dynamic "
        "Ads need, such as content_ids or content_type.",
    ),
    "pixel_decline": (
        "Event volume declined",
        "The number of events received from this connection dropped sharply.",
    ),
}
ACTION_URI = "https://business.facebook.com/events_manager2/list/pixel/{pixel_id}/diagnostics"


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _parse_time(value: str | None, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        pass
    from capirelay.graph._pixel import parse_time

    parsed = parse_time(value)
    if parsed is None:
        raise GraphReply(
            400,
            CODE_INVALID_PARAMETER,
            "(#100) start_time and end_time must be Unix or ISO 8601 times",
        )
    return parsed


def pixel_routes(state: EmulatorState) -> tuple[list[BaseRoute], list[BaseRoute]]:
    """(``/_emulator`` routes, Graph routes); the app mounts the Graph ones last."""

    async def node(request: Request) -> Response:
        fbtrace_id = new_fbtrace_id()
        pixel_id = request.path_params["pixel_id"]
        log: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path,
            "query": secret_free_query(request),
            "pixel_id": pixel_id,
        }
        try:
            check_version(state, request.path_params["version"])
            if not pixel_id.isdigit():
                raise GraphReply(
                    400, CODE_UNKNOWN_PATH, f"Unknown path components: {request.url.path}"
                )
            params = await read_params(request) if request.method == "POST" else {}
            params = {**dict(request.query_params), **params}
            token = find_token(request, params)
            check_token(state, token, False)
            assert token is not None
            check_pixel(state, token, pixel_id)
            response = _json(_answer(request, pixel_id, token, params))
        except GraphReply as reply:
            response = reply.response(fbtrace_id)
            log["error_code"] = reply.code
        log.update(status=response.status_code, fbtrace_id=fbtrace_id, at=state.now())
        state.record_request(log)
        return response

    def _answer(request: Request, pixel_id: str, token: str, params: dict[str, Any]) -> Any:
        edge = request.path_params.get("edge")
        if edge is None and request.method == "GET":
            return _read_node(pixel_id, params)
        if edge is None:
            return _write_node(pixel_id, token, params)
        if edge == "da_checks":
            return _da_checks(pixel_id, params)
        if edge == "stats":
            return _stats(pixel_id, params)
        if edge == "events":  # POST-only edge (its own route): Graph names the method
            method = request.method.lower()
            raise GraphReply(
                400,
                CODE_INVALID_PARAMETER,
                f"Unsupported {method} request.",
                type="GraphMethodException",
            )
        raise GraphReply(400, CODE_UNKNOWN_PATH, f"Unknown path components: {request.url.path}")

    def _read_node(pixel_id: str, params: dict[str, Any]) -> dict[str, Any]:
        settings = state.pixel_settings(pixel_id)
        node = {"id": pixel_id, "name": f"Emulated pixel {pixel_id}", **settings}
        fields = str(params.get("fields") or "id")
        return {f: node[f] for f in fields.split(",") if f in node} | {"id": pixel_id}

    def _write_node(pixel_id: str, token: str, params: dict[str, Any]) -> dict[str, Any]:
        check_write_scope(state, token, "edit")
        changes = _changes(params)
        if not changes:
            raise GraphReply(400, CODE_INVALID_PARAMETER, "(#100) No fields to update were given")
        state.update_pixel_settings(pixel_id, changes)
        return {"success": True}

    def _da_checks(pixel_id: str, params: dict[str, Any]) -> dict[str, Any]:
        method = params.get("connection_method")
        if method is not None and method not in ("ALL", "APP", "BROWSER", "SERVER"):
            raise GraphReply(
                400,
                CODE_INVALID_PARAMETER,
                "(#100) param connection_method must be one of {ALL, APP, BROWSER, SERVER}",
            )
        wanted = _list_param(params.get("checks")) or list(DA_CHECKS)
        failing = {
            str(f.check): f
            for f in state.faults.take(frozenset({FaultKind.DA_CHECK_FAILED}), pixel_id)
        }
        data = []
        for key in wanted:
            if key not in DA_CHECKS:
                raise GraphReply(400, CODE_INVALID_PARAMETER, f"(#100) Unknown check {key!r}")
            title, description = DA_CHECKS[key]
            fault = failing.get(key)
            data.append(
                {
                    "key": key,
                    "title": title,
                    "description": description,
                    "result": "failed" if fault else "passed",
                    "user_message": (fault.message or description) if fault else "",
                    "action_uri": ACTION_URI.format(pixel_id=pixel_id) if fault else "",
                }
            )
        return {"data": data, "paging": {}}

    def _stats(pixel_id: str, params: dict[str, Any]) -> dict[str, Any]:
        aggregation = str(params.get("aggregation") or "event")
        if aggregation not in AGGREGATIONS:
            raise GraphReply(
                400,
                CODE_INVALID_PARAMETER,
                "(#100) param aggregation must be one of the listed values",
            )
        now = state.now()
        end = _parse_time(params.get("end_time"), now)
        start = max(_parse_time(params.get("start_time"), end - 24 * 3600), now - STATS_LOOKBACK)
        source = params.get("event_source")
        if source is not None and source not in ("WEB_ONLY", "SERVER_ONLY"):
            raise GraphReply(
                400, CODE_INVALID_PARAMETER, "(#100) event_source must be WEB_ONLY or SERVER_ONLY"
            )
        return {"data": state.pixel_stats(pixel_id, aggregation, start, end, source), "paging": {}}

    async def browser_events(request: Request) -> Response:
        pixel_id = request.path_params["pixel_id"]
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            body = None
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list) or not all(
            isinstance(e, dict) and isinstance(e.get("event_name"), str) for e in events
        ):
            return _json({"error": {"message": "send {'events': [{'event_name', "
                                    "'event_id'?, 'user_data'?}, ...]}"}}, 400)  # fmt: skip
        return _json({"recorded": state.accept_browser(pixel_id, events)})

    async def token_scopes(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        scopes = body.get("scopes") if isinstance(body, dict) else None
        if not isinstance(token, str) or not isinstance(scopes, list):
            return _json({"error": {"message": "send {'access_token', 'scopes': [...]}"}}, 400)
        record = state.token(token)
        if record is None:
            return _json({"error": {"message": "unknown token"}}, 404)
        record.scopes = tuple(str(s) for s in scopes)
        return _json({"scopes": list(record.scopes)})

    inspection: list[BaseRoute] = [
        Route("/_emulator/pixels/{pixel_id}/browser_events", browser_events, methods=["POST"]),
        Route("/_emulator/tokens/scopes", token_scopes, methods=["POST"]),
    ]
    graph: list[BaseRoute] = [
        Route("/{version}/{pixel_id}/{edge:str}", node, methods=["GET"]),
        Route("/{version}/{pixel_id}", node, methods=["GET", "POST"]),
    ]
    return inspection, graph


def _list_param(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value)
    if text.startswith("["):
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise GraphReply(
                400, CODE_INVALID_PARAMETER, "(#100) list parameters must be JSON arrays"
            ) from None
        if isinstance(parsed, list):
            return [str(v) for v in parsed]
    return [part for part in text.split(",") if part]


def _changes(params: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    enabled = params.get("enable_automatic_matching")
    if enabled is not None:
        if str(enabled).lower() not in ("true", "false", "1", "0"):
            raise GraphReply(
                400,
                CODE_INVALID_PARAMETER,
                "(#100) param enable_automatic_matching must be a boolean",
            )
        changes["enable_automatic_matching"] = str(enabled).lower() in ("true", "1")
    if params.get("automatic_matching_fields") is not None:
        fields = _list_param(params["automatic_matching_fields"])
        bad = [f for f in fields if f not in AAM_FIELDS]
        if bad:
            raise GraphReply(
                400,
                CODE_INVALID_PARAMETER,
                f"(#100) automatic_matching_fields[{bad[0]}] is not a valid value",
            )
        changes["automatic_matching_fields"] = fields
    status = params.get("first_party_cookie_status")
    if status is not None:
        if status not in COOKIE_STATUSES:
            raise GraphReply(
                400,
                CODE_INVALID_PARAMETER,
                "(#100) param first_party_cookie_status must be one of "
                f"{{{', '.join(COOKIE_STATUSES)}}}",
            )
        changes["first_party_cookie_status"] = status
    return changes
