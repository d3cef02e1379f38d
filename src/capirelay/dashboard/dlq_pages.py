"""The dashboard's dead-letter pages: list, detail, replay and purge (``/ui/dlq``).

Thin over :mod:`capirelay.ops.dlq`, like ``capirelay dlq``; every route is
guarded by :meth:`Views.page <capirelay.dashboard.views.Views.page>` (login,
CSRF, same origin).  Actions follow Post/Redirect/Get: the outcome travels as
counts in the redirect's query string, so a reload never repeats a replay or a
purge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from capirelay.dashboard import sessions
from capirelay.dashboard.auth import Principal
from capirelay.dashboard.views import (
    PREFIX,
    Views,
    _explain_group,
    _int_or_none,
    _plain,
    _shared,
    read_form,
)
from capirelay.delivery.engine import DeliveryEngine
from capirelay.ops import dlq
from capirelay.outbox import DLQFilter

__all__ = ["DlqPages"]

DLQ_PAGE_SIZE: Final = 50
AUDIT_SHOWN: Final = 20  # latest replays/purges shown under the dead letters
# Code/subcode filters are applied to this many matching letters (newest first).
DLQ_SCAN_LIMIT: Final = 2000


class DlqPages:
    """The ``/ui/dlq`` handlers of one dashboard (its :class:`Views`)."""

    def __init__(self, views: Views) -> None:
        self.views = views

    async def list(self, request: Request, principal: Principal) -> Response:
        outbox, _ = _shared(request)
        query = request.query_params
        flt = DLQFilter(
            pixel_id=query.get("pixel") or None,
            event_name=query.get("event") or None,
            reason=query.get("reason") or None,
        )
        code, subcode = _int_or_none(query.get("code")), _int_or_none(query.get("subcode"))
        offset = max(_int_or_none(query.get("offset")) or 0, 0)
        if code is None and subcode is None:
            letters = await dlq.list_dead_letters(outbox, flt, DLQ_PAGE_SIZE + 1, offset)
        else:
            scanned = await dlq.list_dead_letters(outbox, flt, DLQ_SCAN_LIMIT, 0)
            matching = [
                s
                for s in scanned
                if (code is None or s.code == code) and (subcode is None or s.subcode == subcode)
            ]
            letters = matching[offset : offset + DLQ_PAGE_SIZE + 1]
        stats = await outbox.stats(now=self.views.clock())
        return self.views.render(
            request,
            principal,
            "dlq.html",
            letters=letters[:DLQ_PAGE_SIZE],
            has_more=len(letters) > DLQ_PAGE_SIZE,
            offset=offset,
            page_size=DLQ_PAGE_SIZE,
            filters={
                "pixel": flt.pixel_id or "",
                "event": flt.event_name or "",
                "reason": flt.reason or "",
                "code": "" if code is None else str(code),
                "subcode": "" if subcode is None else str(subcode),
            },
            pixels=sorted({*self.views.settings.pixels, *stats.depth_by_pixel}),
            reasons=sorted(stats.dlq_by_reason),
            dlq_size=stats.dlq_size,
            notice=_notice(query),
            audit=await outbox.audit_log(limit=AUDIT_SHOWN),
        )

    async def detail(self, request: Request, principal: Principal) -> Response:
        outbox, _ = _shared(request)
        dlq_id = _int_or_none(request.path_params.get("dlq_id"))
        detail = await dlq.show(outbox, dlq_id) if dlq_id is not None else None
        if detail is None:
            response = self.views.render(request, principal, "not_found.html", what="dead letter")
            response.status_code = 404
            return response
        summary = detail.summary
        return self.views.render(
            request,
            principal,
            "dlq_detail.html",
            letter=summary,
            detail=detail,
            explanation=_explain_group(summary.code, summary.subcode, summary.reason),
            deadline_passed=summary.deadline <= self.views.clock(),
        )

    async def replay_one(self, request: Request, principal: Principal) -> Response:
        outbox, engine = _shared(request)
        dlq_id = _int_or_none(request.path_params.get("dlq_id"))
        report = await dlq.replay(
            outbox,
            [dlq_id] if dlq_id is not None else [],
            now=self.views.clock(),
            actor=sessions.actor_of(principal),
            origin="dashboard",
        )
        return self._after_replay(engine, report)

    async def replay_filtered(self, request: Request, principal: Principal) -> Response:
        outbox, engine = _shared(request)
        flt = _form_filter(await read_form(request) or {})
        report = await dlq.replay(
            outbox,
            flt,
            now=self.views.clock(),
            actor=sessions.actor_of(principal),
            origin="dashboard",
        )
        return self._after_replay(engine, report)

    def _after_replay(self, engine: DeliveryEngine, report: dlq.ReplayReport) -> Response:
        for pixel_id in self.views.settings.pixels:
            engine.notify(pixel_id)
        counts = report.counts
        return RedirectResponse(
            f"{PREFIX}/dlq?replayed={counts['requeued']}&invalid={counts['still_invalid']}"
            f"&expired={counts['expired']}&missing={counts['not_found']}",
            status_code=303,
        )

    async def purge_one(self, request: Request, principal: Principal) -> Response:
        outbox, _ = _shared(request)
        dlq_id = _int_or_none(request.path_params.get("dlq_id"))
        purged = await dlq.purge(
            outbox,
            [dlq_id] if dlq_id is not None else [],
            actor=sessions.actor_of(principal),
            origin="dashboard",
            now=self.views.clock(),
        )
        return RedirectResponse(f"{PREFIX}/dlq?purged={purged}", status_code=303)

    async def purge_filtered(self, request: Request, principal: Principal) -> Response:
        outbox, _ = _shared(request)
        form = await read_form(request) or {}
        if form.get("confirm") != "yes":
            return _plain(400, "tick the confirmation box to purge")
        purged = await dlq.purge(
            outbox,
            _form_filter(form),
            actor=sessions.actor_of(principal),
            origin="dashboard",
            now=self.views.clock(),
        )
        return RedirectResponse(f"{PREFIX}/dlq?purged={purged}", status_code=303)


def _form_filter(form: Mapping[str, str]) -> DLQFilter:
    def text(name: str) -> str | None:
        return form.get(name) or None

    return DLQFilter(pixel_id=text("pixel"), event_name=text("event"), reason=text("reason"))


def _notice(query: Any) -> list[str]:
    """Outcome lines of the last action, built from the counts in the redirect."""
    lines = []
    for key, template in (
        ("replayed", "{n} dead letter(s) re-queued for delivery."),
        ("invalid", "{n} still fail validation; fix the mapping first."),
        ("expired", "{n} are past their deadline and cannot be sent."),
        ("missing", "{n} were no longer in the dead-letter queue."),
        ("purged", "{n} dead letter(s) purged."),
    ):
        n = _int_or_none(query.get(key))
        if n is not None and (n or key in ("replayed", "purged")):
            lines.append(template.format(n=n))
    return lines
