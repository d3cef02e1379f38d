"""The dashboard's search box: an event id or an order id, answered with the event's story.

The same story as ``capirelay trace`` and ``GET /v1/events/{event_id}``
(:mod:`capirelay.ops.trace`): first the text is taken as an ``event_id``; when nothing
is known under that id it is taken as a ``custom_data.order_id`` (receipts keep a
hash of it, so the order id itself is never stored).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from capirelay.dashboard.auth import Principal
from capirelay.dashboard.views import Views
from capirelay.ops.trace import pauses_of, status_of, story
from capirelay.outbox.base import Outbox, StorageUnavailable
from capirelay.outbox.receipts import TraceRecord

__all__ = ["search_page"]

MAX_QUERY = 256
MAX_ORDER_MATCHES = 20


def search_page(views: Views) -> Callable[[Request, Principal], Awaitable[Response]]:
    """The ``/ui/search`` handler for :class:`capirelay.dashboard.views.Views`."""

    async def search(request: Request, principal: Principal) -> Response:
        query = request.query_params.get("q", "").strip()[:MAX_QUERY]
        outbox: Outbox = request.app.state.outbox
        records: list[TraceRecord] = []
        matched_by = ""
        error = ""
        if query:
            try:
                record = await outbox.trace(query)
                if record.known:
                    records, matched_by = [record], "event id"
                else:
                    ids = await outbox.event_ids_for_order(query, limit=MAX_ORDER_MATCHES)
                    records = [r for r in [await outbox.trace(i) for i in ids] if r.known]
                    matched_by = "order id" if records else ""
            except StorageUnavailable:
                error = "storage is unavailable right now; try again"
        pauses = pauses_of(request.app.state.engine.status()) if records else {}
        results = [
            {"record": r, "status": status_of(r), "steps": story(r, pauses)} for r in records
        ]
        return views.render(
            request,
            principal,
            "search.html",
            query=query,
            results=results,
            matched_by=matched_by,
            error=error,
        )

    return search
