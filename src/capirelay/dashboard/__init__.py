"""The operator dashboard under ``/ui/``: what the gateway received, sent, refused, and why.

Server-rendered HTML (Jinja2 templates, inline SVG charts, one small CSS
file, no JavaScript) so it loads fast on a phone and needs no front-end
build.  It is **off** unless ``Settings.dashboard`` names a credential (an
admin token, or HTTP basic user and password): without one :func:`create_dashboard`
returns ``None``, no route is added, and ``/ui/`` answers 404 like any
unknown path.

Pages: overview (per pixel and event name, with throughput and error
plots), errors grouped by Meta code/subcode with the fix, the dead-letter
queue (browse, inspect, replay, purge), test events, match quality (predicted
here, and Meta's own EMQ next to it), Meta's diagnostics and sent versus
counted (:mod:`~capirelay.dashboard.diagnostics`) and health (tokens, breakers,
API versions, clock skew, AAM and first-party cookies).  Authentication, CSRF
and the rolling statistics live in :mod:`~capirelay.dashboard.auth`,
:mod:`~capirelay.dashboard.csrf` and :mod:`~capirelay.dashboard.stats`.

Wiring (``capirelay.server.app``)::

    dashboard = create_dashboard(settings, metrics, transport=transport)
    routes += dashboard.routes() if dashboard else []
    # in the lifespan:  await stack.enter_async_context(dashboard.running())

The routes are a plain :class:`~starlette.routing.Mount` of the gateway app,
so handlers reach the outbox and the delivery engine through
``request.app.state`` like every other route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

import httpx
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles

from capirelay.config import Settings
from capirelay.dashboard.auth import DashboardAuth, dashboard_enabled
from capirelay.dashboard.diagnostics import DiagnosticsPage
from capirelay.dashboard.dlq_pages import DlqPages
from capirelay.dashboard.meta import MetaView
from capirelay.dashboard.search import search_page
from capirelay.dashboard.stats import SAMPLE_INTERVAL_SECONDS, ActivityRecorder, DeliveryLog
from capirelay.dashboard.views import PREFIX, Views
from capirelay.metrics import Metrics
from capirelay.tasks import cancel_and_wait

__all__ = ["Dashboard", "create_dashboard", "dashboard_enabled"]

log = logging.getLogger("capirelay.dashboard")


class RowIdConvertor(Convertor[int]):
    """A table row's id in a path: 1 to 18 ASCII digits, below 2**63 (what SQLite's
    INTEGER and PostgreSQL's bigint hold).  A longer number matches no route (404); with
    Starlette's ``int`` a 5,000-digit id raised while routing, before authentication (a
    500 for anyone), and a 20-digit one in SQLite."""

    regex = "[0-9]{1,18}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("row_id", RowIdConvertor())


class Dashboard:
    """One gateway's dashboard: its routes, and the sampler that keeps its history."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.recorder = ActivityRecorder(metrics, clock=clock)
        self.deliveries = DeliveryLog(clock=clock)
        metrics.delivery_listeners.append(self.deliveries)
        self.views = Views(
            settings,
            metrics,
            auth=DashboardAuth(settings.dashboard, clock=clock),
            recorder=self.recorder,
            deliveries=self.deliveries,
            meta=MetaView(settings, transport=transport, clock=clock),
            clock=clock,
        )

    def routes(self) -> list[BaseRoute]:
        v = self.views
        dlq = DlqPages(v)
        page = v.page
        return [
            # "/ui" without the slash: a relative redirect (Starlette's own slash redirect
            # builds an absolute URL from the Host header, which a client controls).
            Route(PREFIX, _to_dashboard, methods=["GET"]),
            Mount(
                PREFIX,
                app=Router(
                    redirect_slashes=False,
                    routes=[
                        Route("/", page(v.overview), methods=["GET"]),
                        Route("/login", v.login_form, methods=["GET"]),
                        Route("/login", v.login, methods=["POST"]),
                        Route("/logout", page(v.logout), methods=["POST"]),
                        Route("/errors", page(v.errors), methods=["GET"]),
                        Route("/dlq", page(dlq.list), methods=["GET"]),
                        Route("/dlq/replay", page(dlq.replay_filtered), methods=["POST"]),
                        Route("/dlq/purge", page(dlq.purge_filtered), methods=["POST"]),
                        Route("/dlq/{dlq_id:row_id}", page(dlq.detail), methods=["GET"]),
                        Route(
                            "/dlq/{dlq_id:row_id}/replay", page(dlq.replay_one), methods=["POST"]
                        ),
                        Route("/dlq/{dlq_id:row_id}/purge", page(dlq.purge_one), methods=["POST"]),
                        Route("/test-events", page(v.test_events), methods=["GET"]),
                        Route("/quality", page(v.quality), methods=["GET"]),
                        Route("/health", page(v.health), methods=["GET"]),
                        Route("/diagnostics", page(DiagnosticsPage(v)), methods=["GET"]),
                        Route("/search", page(search_page(v)), methods=["GET"]),
                        # The stylesheet is public: the login page needs it, and it holds nothing.
                        Mount(
                            "/static",
                            app=StaticFiles(packages=[("capirelay.dashboard", "static")]),
                            name="dashboard-static",
                        ),
                    ],
                ),
            ),
        ]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Sample the counters every few seconds while the gateway runs."""
        task = asyncio.create_task(self._sample_forever(), name="capirelay-dashboard-sampler")
        try:
            yield
        finally:
            await cancel_and_wait(task)

    async def _sample_forever(self) -> None:
        while True:
            try:
                self.recorder.sample()
            except Exception:
                # The dashboard's history must never take the gateway down.
                log.exception("dashboard sampler failed; retrying")
            await asyncio.sleep(SAMPLE_INTERVAL_SECONDS)


def create_dashboard(
    settings: Settings,
    metrics: Metrics,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Dashboard | None:
    """The dashboard for ``settings``, or ``None`` when no credential is configured."""
    if not dashboard_enabled(settings.dashboard):
        return None
    return Dashboard(settings, metrics, transport=transport)


async def _to_dashboard(request: Request) -> Response:
    return RedirectResponse(f"{PREFIX}/", status_code=303)
