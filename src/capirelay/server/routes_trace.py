"""``GET /v1/events/{event_id}?pixel_id=...``: an event's story for the backend that sent it.

Authenticated with an ingest key, answered only for that key's pixels (a key limited
to some pixels cannot read another pixel's events).  The answer is the same JSON as
``capirelay trace --json``: status, the story (received → attempts → outcome with
Meta's ``fbtrace_id``), receipts and any row still queued or dead-lettered.  Nothing
in it is an identifier: receipts are hash-only and payloads are never returned.
404 when storage knows nothing of the event for that pixel.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from capirelay.config import Settings
from capirelay.ops.trace import pauses_of, trace_json
from capirelay.outbox.base import Outbox, StorageUnavailable
from capirelay.server.auth import authenticate, authorize_pixel
from capirelay.server.http import ApiError, JSONResponse

__all__ = ["get_event"]

_PIXEL_ID = re.compile(r"^[0-9]{1,32}$")
_MAX_EVENT_ID = 256


async def get_event(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    caller = authenticate(request.headers.get("authorization"), settings)
    pixel_id = request.query_params.get("pixel_id", "")
    if not _PIXEL_ID.match(pixel_id):
        raise ApiError(
            422,
            "invalid_request",
            "pixel_id (query) is required: the numeric pixel id the event was sent to, "
            "e.g. /v1/events/order-1001?pixel_id=1234567890",
        )
    if pixel_id not in settings.pixels:
        raise ApiError(
            404, "unknown_pixel", f"pixel {pixel_id} is not configured; add it to [pixels]"
        )
    authorize_pixel(caller, pixel_id)
    event_id = request.path_params["event_id"]
    if not event_id or len(event_id) > _MAX_EVENT_ID:
        raise ApiError(422, "invalid_request", "event_id must be 1 to 256 characters")
    outbox: Outbox = request.app.state.outbox
    try:
        record = await outbox.trace(event_id, pixel_id=pixel_id)
    except StorageUnavailable:
        raise ApiError(
            503, "storage_unavailable", "the gateway cannot read its storage right now; retry"
        ) from None
    if not record.known:
        raise ApiError(
            404,
            "unknown_event",
            f"no event with this event_id for pixel {pixel_id}: never received, or its "
            "receipt is older than receipts.retention_days",
        )
    return JSONResponse(trace_json(record, pauses_of(request.app.state.engine.status())), 200)
