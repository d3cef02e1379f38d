"""``/healthz`` (the process answers), ``/readyz`` (it can do its job) and ``/metrics``.

Readiness means both halves of the promise hold: storage answers (an event
can be durably accepted) and the delivery engine runs (it will be sent).  A
load balancer should route on ``/readyz`` and a supervisor restart on
``/healthz``.  ``/metrics`` refreshes the queue gauges from the outbox on each
scrape: exact at scrape time on SQLite; on PostgreSQL at most 5 s old (a minute
when counting the queue is slow), one count shared by every replica
(``capirelay.outbox.postgres._stats``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from starlette.requests import Request
from starlette.responses import Response

from capirelay.delivery.engine import STATS_INTERVAL
from capirelay.metrics import CONTENT_TYPE_LATEST, Metrics
from capirelay.outbox.base import DeadLetterReason, Outbox, QueueStats, StorageUnavailable
from capirelay.server._commit import recent_write_failure
from capirelay.server.auth import authorize_metrics_scrape
from capirelay.server.http import JSONResponse, error_response

__all__ = ["healthz", "metrics_text", "readyz"]

log = logging.getLogger("capirelay.server")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    reasons = []
    if not await _storage_answers(request.app.state.outbox):
        reasons.append("storage: the outbox does not answer (disk full, database down?)")
    else:
        refused = recent_write_failure(request.app.state)
        if refused is not None:
            reasons.append(
                f"storage: a write was refused {refused:.0f} s ago (disk full?); "
                "ingest answers 503 until storage accepts writes again"
            )
    engine = request.app.state.engine
    if engine is None or not engine.running:
        reasons.append("delivery: the delivery engine is not running")
    if reasons:
        return JSONResponse({"status": "not_ready", "reasons": reasons}, 503)
    return JSONResponse({"status": "ready", "reasons": []})


async def metrics_text(request: Request) -> Response:
    authorize_metrics_scrape(request.headers.get("authorization"), request.app.state.settings)
    metrics: Metrics = request.app.state.metrics
    outbox: Outbox | None = request.app.state.outbox
    if outbox is None:
        return error_response(503, "not_started", "the gateway is still starting")
    try:
        # Scrapes of every replica share one count of the queue (PostgreSQL).
        stats = await outbox.stats(now=time.time(), max_age=STATS_INTERVAL)
    except StorageUnavailable:
        log.warning("metrics scrape: queue statistics unavailable (storage down)")
    else:
        _refresh_queue_gauges(metrics, stats, request.app.state.settings.pixels, time.time())
    return Response(metrics.render(), headers={"content-type": CONTENT_TYPE_LATEST})


async def _storage_answers(outbox: Outbox | None) -> bool:
    if outbox is None:
        return False
    try:
        return await outbox.ping()
    except Exception:  # readiness must answer, whatever the storage raised
        log.warning("readiness: storage ping failed", exc_info=False)
        return False


def _refresh_queue_gauges(
    metrics: Metrics, stats: QueueStats, configured_pixels: Iterable[str], now: float
) -> None:
    # Configured pixels with an empty queue report 0, not a stale last value.
    pixels = set(stats.depth_by_pixel) | set(configured_pixels)
    for pixel_id in pixels:
        metrics.queue_depth.labels(pixel_id).set(stats.depth_by_pixel.get(pixel_id, 0))
    oldest_age = now - stats.oldest_queued_at if stats.oldest_queued_at is not None else 0.0
    metrics.oldest_queued_age.set(max(oldest_age, 0.0))
    if stats.earliest_deadline is not None:
        metrics.min_time_to_deadline.set(stats.earliest_deadline - now)
    for reason in set(stats.dlq_by_reason) | {str(reason) for reason in DeadLetterReason}:
        metrics.dlq_size.labels(reason).set(stats.dlq_by_reason.get(reason, 0))
