"""The request body for ``POST /{version}/{pixel_id}/events``, encoded with orjson.

Meta takes at most 1,000 events per request and rejects the whole request if
it is over; :func:`encode_request` refuses to build such a body so the mistake
surfaces here, with a message, instead of as a Graph error.  Splitting into
batches is the caller's job (``capirelay.delivery`` does it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from capirelay.events._models import Event
from capirelay.meta_facts import MAX_EVENTS_PER_REQUEST


def encode_request(
    events: Sequence[Event | Mapping[str, Any]],
    *,
    test_event_code: str | None = None,
    partner_agent: str | None = None,
    namespace_id: str | None = None,
    upload_id: str | None = None,
    upload_tag: str | None = None,
    upload_source: str | None = None,
    platforms: Sequence[Mapping[str, Any]] | None = None,
    progress: Mapping[str, Any] | None = None,
    access_token: str | None = None,
    default_country: str | None = None,
) -> bytes:
    """``{"data": [...], <request params>}`` as JSON bytes.

    :class:`Event` items are normalized and hashed (``default_country`` is the
    hint for national phones, states and zips); mappings are taken as
    wire-ready payloads and sent as they are.  Fields dropped during
    normalization are not reported here: call :meth:`Event.to_wire` first
    when the problems matter.  ``access_token`` goes in the body, never a URL.
    """
    count = len(events)
    if count == 0:
        raise ValueError("a CAPI request needs at least one event in data")
    if count > MAX_EVENTS_PER_REQUEST:
        raise ValueError(
            f"a CAPI request carries at most {MAX_EVENTS_PER_REQUEST:,} events, got {count:,}; "
            f"split them into batches of {MAX_EVENTS_PER_REQUEST:,}"
        )
    body: dict[str, Any] = {
        "data": [
            event.to_payload(default_country) if isinstance(event, Event) else dict(event)
            for event in events
        ]
    }
    params: dict[str, Any] = {
        "test_event_code": test_event_code,
        "partner_agent": partner_agent,
        "namespace_id": namespace_id,
        "upload_id": upload_id,
        "upload_tag": upload_tag,
        "upload_source": upload_source,
        "platforms": None if platforms is None else [dict(item) for item in platforms],
        "progress": None if progress is None else dict(progress),
        "access_token": access_token,
    }
    body.update((key, value) for key, value in params.items() if value is not None)
    return orjson.dumps(body)
