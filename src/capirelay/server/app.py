"""The gateway's ASGI application: wiring, lifespan and the middleware every response passes.

:func:`create_app` builds a Starlette app (not FastAPI: the hot path is one
JSON parse, a loop over events and one group commit, and a framework layer
per request would cost more than the work); ``POST /v1/events`` and ``POST
/v1/collect`` are answered by :class:`capirelay.server.fast_path.Gateway` before
Starlette's own layers.  The lifespan opens the outbox and
starts the delivery engine, and on shutdown stops the engine first (it
finishes or releases in-flight batches) and then closes the outbox (pending
writes committed).  An outbox or engine passed in by the caller belongs to the
caller: the app uses it but neither opens, starts, stops nor closes it.

Routes reach the shared pieces through ``app.state`` (``settings``,
``outbox``, ``engine``, ``metrics``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib import resources

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from capirelay.config import RateLimit, Settings
from capirelay.dashboard import create_dashboard
from capirelay.delivery.engine import DeliveryEngine
from capirelay.metrics import Metrics
from capirelay.ops.diagnostics import DiagnosticsRunner
from capirelay.ops.meta_store import meta_store_for
from capirelay.ops.preflight import log_startup_findings
from capirelay.outbox import Outbox, open_outbox
from capirelay.server import cors, routes_health, routes_ingest, routes_trace, routes_webhooks
from capirelay.server.body_limit import BodyLimitMiddleware, body_limit
from capirelay.server.fast_path import (
    FastRoute,
    Gateway,
    add_security_headers,
    log_access,
    log_unhandled,
)
from capirelay.server.http import ApiError, JSONResponse, error_response
from capirelay.server.openapi import openapi_document
from capirelay.server.rate_limit import GatewayLimits
from capirelay.sources import snippet

__all__ = ["create_app"]

log = logging.getLogger("capirelay.server")


def create_app(
    settings: Settings,
    *,
    outbox: Outbox | None = None,
    engine: DeliveryEngine | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    metrics: Metrics | None = None,
) -> Starlette:
    """The gateway app for ``settings``; see the module docstring for ownership rules.

    ``transport`` is handed to the delivery engine the app builds (tests plug
    an in-process Graph API in there); ``metrics`` defaults to a fresh registry.
    """
    metrics = metrics or Metrics()
    dashboard = create_dashboard(settings, metrics, transport=transport)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.outbox = outbox or await _open_owned_outbox(settings, stack)
            # Started before the engine so it stops after it: its last flush then holds
            # every delivery the engine acknowledged.
            app.state.diagnostics = _start_diagnostics(
                app.state.outbox, settings, metrics, transport, stack
            )
            app.state.engine = engine or await _start_owned_engine(
                app.state.outbox, settings, metrics, transport, stack
            )
            if dashboard is not None:
                await stack.enter_async_context(dashboard.running())
            if not settings.ingest_keys:
                log.warning("no ingest_keys configured: POST /v1/events answers 401 to everyone")
            log_startup_findings(settings, log)
            yield

    app = Gateway(
        fast_routes={
            "/v1/events": routes_ingest.post_events,
            "/v1/collect": routes_ingest.post_collect,
        },
        # What BodyLimitMiddleware refuses by declared length before the route runs
        # (/v1/collect answers that itself, with CORS headers).
        body_limits={"/v1/events": body_limit("/v1/events", settings)},
        routes=[
            Route("/v1/events", FastRoute(routes_ingest.post_events), methods=["POST"]),
            Route("/v1/collect", FastRoute(routes_ingest.post_collect), methods=["POST"]),
            Route("/v1/events/{event_id:path}", routes_trace.get_event, methods=["GET"]),
            Route("/v1/collect", routes_ingest.preflight_collect, methods=["OPTIONS"]),
            Route("/v1/webhooks/{name}", routes_webhooks.post_webhook, methods=["POST"]),
            Route(snippet.SNIPPET_PATH, snippet.get_snippet, methods=["GET"]),
            Route("/healthz", routes_health.healthz, methods=["GET"]),
            Route("/readyz", routes_health.readyz, methods=["GET"]),
            Route("/metrics", routes_health.metrics_text, methods=["GET"]),
            Route("/openapi.json", _openapi, methods=["GET"]),
            Route("/favicon.ico", _favicon, methods=["GET"]),
            *(dashboard.routes() if dashboard is not None else []),
        ],
        exception_handlers={
            ApiError: _api_error,
            404: _not_found,
            405: _method_not_allowed,
            500: _internal_error,
        },
        lifespan=lifespan,
    )
    # No automatic slash redirects: Starlette builds them as absolute URLs from the Host
    # header (a client could make the gateway redirect to any host); routes that want one
    # answer a relative Location themselves (GET /ui).
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.webhooks = routes_webhooks.load_webhooks(settings)
    app.state.beacon_origins = cors.BeaconOrigins.from_settings(settings)
    app.state.limits = GatewayLimits.from_settings(settings.rate_limits, _ingest_quotas(settings))
    app.state.outbox = outbox
    app.state.engine = engine
    app.state.diagnostics = None
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(GatewayHeadersMiddleware)
    return app


def _ingest_quotas(settings: Settings) -> dict[str, RateLimit]:
    return {
        name: RateLimit(rate=key.events_per_second, burst=key.burst)
        for name, key in settings.ingest_keys.items()
        if key.events_per_second is not None and key.burst is not None
    }


async def _open_owned_outbox(settings: Settings, stack: AsyncExitStack) -> Outbox:
    owned = open_outbox(
        settings.storage,
        synchronous=settings.sqlite_synchronous,
        pool_size=settings.postgres_pool_size,
    )
    await owned.open()
    stack.push_async_callback(owned.close)
    return owned


async def _start_owned_engine(
    outbox: Outbox,
    settings: Settings,
    metrics: Metrics,
    transport: httpx.AsyncBaseTransport | None,
    stack: AsyncExitStack,
) -> DeliveryEngine:
    owned = DeliveryEngine(outbox, settings, metrics, transport=transport)
    await owned.start()
    stack.push_async_callback(owned.stop)
    return owned


def _start_diagnostics(
    outbox: Outbox,
    settings: Settings,
    metrics: Metrics,
    transport: httpx.AsyncBaseTransport | None,
    stack: AsyncExitStack,
) -> DiagnosticsRunner | None:
    """Meta's diagnostics on a schedule (and the delivered-per-hour counter)."""
    try:
        store = meta_store_for(outbox)
    except TypeError:  # an outbox implementation without the diagnostics tables
        return None
    runner = DiagnosticsRunner(settings, store, metrics, transport=transport)
    runner.start()
    stack.push_async_callback(runner.stop)
    return runner


async def _openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


@functools.cache
def _favicon_bytes() -> bytes:
    return resources.files("capirelay.dashboard").joinpath("static/favicon.ico").read_bytes()


async def _favicon(request: Request) -> Response:
    """Browsers ask every page's origin for it; the dashboard's icon, cached for a day."""
    return Response(
        _favicon_bytes(),
        media_type="image/x-icon",
        headers={"Cache-Control": "public, max-age=86400"},
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, "not_found", "no such endpoint; see /openapi.json")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return error_response(405, "method_not_allowed", "method not allowed; see /openapi.json")


def _internal_error_response() -> Response:
    return error_response(500, "internal_error", "the gateway failed; nothing was acknowledged")


async def _internal_error(request: Request, exc: Exception) -> Response:
    log_unhandled(exc, request.scope)
    return _internal_error_response()


class GatewayHeadersMiddleware:
    """Security headers on every response, and an access log without query strings or IPs.

    Pure ASGI (no BaseHTTPMiddleware) so it adds no task or body copy per
    request.  The access line carries method, path, status and duration only:
    query strings may hold click ids, and client IPs are personal data.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"server"]
                add_security_headers(headers)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # Starlette's outermost layer (ServerErrorMiddleware, outside this one) logs an
            # unhandled error (its handler, _internal_error) and re-raises it; its own 500
            # would go out past this middleware, without the security headers.  The 500 is
            # sent here instead, through them, so that layer finds the response started and
            # sends none.  A response already started keeps the status that went out.
            if status == 0:
                await _internal_error_response()(scope, receive, send_with_headers)
            raise
        finally:
            log_access(scope, status, started)
