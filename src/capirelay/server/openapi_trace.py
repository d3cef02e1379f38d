"""OpenAPI pieces of ``GET /v1/events/{event_id}`` (see :mod:`capirelay.server.routes_trace`)."""

from __future__ import annotations

from typing import Any

__all__ = ["EVENT_TRACE", "trace_operation"]

_REF = "#/components/schemas/{model}"

_STEP = {
    "type": "object",
    "properties": {
        "at": {"type": ["number", "null"], "description": "unix seconds"},
        "at_iso": {"type": ["string", "null"]},
        "what": {
            "type": "string",
            "enum": [
                "received",
                "attempt",
                "delivered",
                "dead_lettered",
                "duplicate",
                "dropped",
                "rejected",
                "queued",
                "waiting",
                "paused",
                "in_dlq",
            ],
        },
        "detail": {"type": "string"},
        "pixel_id": {"type": "string"},
        "event_name": {"type": "string"},
        "fbtrace_id": {"type": ["string", "null"], "description": "Meta's id of its answer"},
    },
}

EVENT_TRACE: dict[str, Any] = {
    "type": "object",
    "required": ["event_id", "status", "story", "receipts", "pending"],
    "properties": {
        "event_id": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["delivered", "queued", "dead_lettered", "duplicate", "dropped", "rejected"],
            "description": "dropped: by the consent or bot policy; rejected: failed "
            "validation at ingest (a webhook's event)",
        },
        "story": {"type": "array", "items": _STEP, "description": "steps in time order"},
        "receipts": {
            "type": "array",
            "description": "hash-only records of final states (delivered, dead_lettered, "
            "duplicate, dropped) with Meta's fbtrace_id and events_received",
            "items": {"type": "object"},
        },
        "pending": {
            "type": "array",
            "description": "the event's row still in the queue or the dead-letter store",
            "items": {"type": "object"},
        },
    },
}


def trace_operation() -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}}
    return {
        "summary": "Did this event reach Meta? Its story: received, attempts, outcome",
        "operationId": "getEvent",
        "security": [{"ingestKey": []}],
        "parameters": [
            {"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}},
            {
                "name": "pixel_id",
                "in": "query",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]{1,32}$"},
                "description": "the pixel the event was sent to; the key must cover it",
            },
        ],
        "responses": {
            "200": {
                "description": "what storage knows of the event",
                "content": {
                    "application/json": {"schema": {"$ref": _REF.format(model="EventTrace")}}
                },
            },
            "401": {"description": "missing or invalid ingest key", **error},
            "403": {"description": "the key may not read this pixel", **error},
            "404": {"description": "unknown pixel, or no such event (or pruned)", **error},
            "422": {"description": "pixel_id missing or malformed", **error},
            "503": {"description": "storage unavailable", **error},
        },
    }
