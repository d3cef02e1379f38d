"""The delivery engine: one worker per pixel, plus the housekeeping that watches them all.

The engine owns the pixel workers (:mod:`capirelay.delivery.worker`), one
:class:`GraphClient` per (API version, app secret, partner agent), and a
supervisor task that every ``poll_seconds`` finds pixels with due events (a
pixel that appears only in the queue still gets a worker, which reports it
as unconfigured), and every few seconds refreshes the queue gauges from
``outbox.stats`` and forgets dedup keys older than 48 h and order-ledger entries
past their retention.  Wall and monotonic time come from one injected
:class:`capirelay.clock.Clock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random

import httpx

from capirelay.clock import SYSTEM_CLOCK, Clock
from capirelay.config import GraphClientOptions, PixelSettings, Settings
from capirelay.delivery.status import PixelStatus
from capirelay.delivery.worker import PixelWorker
from capirelay.graph import GraphClient
from capirelay.metrics import Metrics
from capirelay.outbox import Outbox, StorageUnavailable
from capirelay.retry import RetryPolicy
from capirelay.tasks import cancel_and_wait

__all__ = ["DeliveryEngine"]

log = logging.getLogger("capirelay.delivery")

STATS_INTERVAL = 5.0
# Longest single wait for a cross-process work announcement (LISTEN/NOTIFY on PostgreSQL).
WORK_WAIT_SECONDS = 30.0
DEDUP_EXPIRY_INTERVAL = 600.0
_DRAIN_POLL = 0.02


class DeliveryEngine:
    """Moves events from the outbox to the Graph API; see the package docstring for the rules."""

    def __init__(
        self,
        outbox: Outbox,
        settings: Settings,
        metrics: Metrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = SYSTEM_CLOCK,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._metrics = metrics
        self._transport = transport
        self._clock = clock
        delivery = settings.delivery
        self._policy = retry_policy or RetryPolicy(
            base=delivery.backoff_base,
            max_delay=max(delivery.backoff_max, delivery.backoff_base),
        )
        self._rng = random.Random()
        self._workers: dict[str, PixelWorker] = {}
        self._clients: dict[GraphClientOptions, GraphClient] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._running = False
        # The first housekeeping runs every periodic task.  Not 0.0: the monotonic clock
        # counts from the machine's boot, so a replica started minutes after a boot would
        # skip its expiry, pruning and gauges until the clock passed each interval.
        self._last_stats = -math.inf
        self._last_dedup_expiry = -math.inf
        self._last_receipt_prune = -math.inf
        self._dlq_reasons: set[str] = set()

    # ------------------------------------------------------------------ API

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        for pixel_id in self._settings.pixels:
            self._worker(pixel_id)
        with contextlib.suppress(StorageUnavailable):
            for pixel_id in await self._outbox.due_pixels(now=self._clock.time()):
                self._worker(pixel_id)
        self._supervisor = asyncio.create_task(self._supervise(), name="capirelay-delivery")
        self._listener = asyncio.create_task(self._listen_for_work(), name="capirelay-work")

    async def stop(self, timeout: float = 10.0) -> None:
        """Lease nothing new; finish in-flight batches within ``timeout``, release the rest."""
        if not self._running:
            return
        self._running = False
        await cancel_and_wait(self._supervisor, self._listener)
        self._supervisor = self._listener = None
        workers = list(self._workers.values())
        await asyncio.gather(*(w.stop(timeout) for w in workers))
        self._workers.clear()
        clients = list(self._clients.values())
        self._clients.clear()
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    def notify(self, pixel_id: str) -> None:
        """Ingest queued events for ``pixel_id``: wake its worker now (no poll delay)."""
        if self._running:
            self._worker(pixel_id).notify()

    def pixel_status(self, pixel_id: str) -> PixelStatus:
        worker = self._workers.get(pixel_id)
        if worker is None:
            worker = self._worker(pixel_id) if self._running else self._detached(pixel_id)
        return worker.status()

    def status(self) -> dict[str, PixelStatus]:
        pixels = {*self._settings.pixels, *self._workers}
        return {pixel_id: self.pixel_status(pixel_id) for pixel_id in sorted(pixels)}

    async def drain(self, timeout: float) -> bool:
        """Wait until the queue is empty (every event delivered or dead-lettered) and nothing
        is in flight; False if ``timeout`` passed first (e.g. a pixel's breaker is open).

        Events waiting out a backoff count as not drained: they will be due soon.
        """
        # A bound on a real wait (for I/O), so the event loop's clock, not the injected one.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await self._drained():
                return True
            for worker in self._workers.values():
                worker.notify()
            await asyncio.sleep(_DRAIN_POLL)
        return await self._drained()

    # ------------------------------------------------------------- internals

    async def _drained(self) -> bool:
        if any(not w.idle for w in self._workers.values()):
            return False
        stats = await self._outbox.stats(now=self._clock.time())
        return stats.depth == 0

    def _worker(self, pixel_id: str) -> PixelWorker:
        worker = self._workers.get(pixel_id)
        if worker is None:
            worker = self._detached(pixel_id)
            self._workers[pixel_id] = worker
            worker.start()
        return worker

    def _detached(self, pixel_id: str) -> PixelWorker:
        return PixelWorker(
            pixel_id,
            outbox=self._outbox,
            settings=self._settings,
            metrics=self._metrics,
            client_for=self._client_for,
            clock=self._clock,
            retry_policy=self._policy,
            rng=self._rng,
        )

    def _client_for(self, pixel: PixelSettings | None) -> GraphClient:
        options = self._settings.graph_client_options(pixel)
        client = self._clients.get(options)
        if client is None:
            client = GraphClient(
                **options._asdict(),
                base_url=self._settings.graph_url,
                timeout=self._settings.delivery.request_timeout,
                transport=self._transport,
            )
            self._clients[options] = client
        return client

    async def _supervise(self) -> None:
        while True:
            try:
                await self._housekeeping()
            except StorageUnavailable as exc:
                log.warning("delivery housekeeping: outbox unavailable: %s", exc)
            except Exception:
                log.exception("delivery housekeeping failed; retrying")
            await asyncio.sleep(self._settings.delivery.poll_seconds)

    async def _listen_for_work(self) -> None:
        """Wake a pixel's worker as soon as any process sharing the outbox queues its events
        (PostgreSQL LISTEN/NOTIFY); the supervisor's polling remains the fallback."""
        while True:
            try:
                pixels = await self._outbox.wait_for_work(WORK_WAIT_SECONDS)
            except Exception:
                log.exception("delivery: waiting for work announcements failed; polling")
                await asyncio.sleep(self._settings.delivery.poll_seconds)
                continue
            for pixel_id in pixels:
                self.notify(pixel_id)

    async def _housekeeping(self) -> None:
        now = self._clock.time()
        for pixel_id in await self._outbox.due_pixels(now=now):
            self._worker(pixel_id).notify()
        mono = self._clock.monotonic()
        if mono - self._last_stats >= STATS_INTERVAL:
            self._last_stats = mono
            await self.refresh_gauges(max_age=STATS_INTERVAL)
        if mono - self._last_dedup_expiry >= DEDUP_EXPIRY_INTERVAL:
            self._last_dedup_expiry = mono
            await self._outbox.expire_dedup(now=now)
            ledger = self._settings.order_ledger
            await self._outbox.prune_order_ledger(
                now=now,
                retention_seconds=ledger.retention_days * 86400.0,
                max_entries=ledger.max_entries,
            )
        receipts = self._settings.receipts
        if mono - self._last_receipt_prune >= receipts.prune_interval_seconds:
            self._last_receipt_prune = mono
            retention = receipts.retention_days * 86400
            await self._outbox.prune_receipts(
                now=now, retention_seconds=retention, cap=receipts.max_receipts
            )

    async def refresh_gauges(self, *, max_age: float = 0.0) -> None:
        """Queue depth, oldest age, time to the nearest deadline and DLQ size, from the outbox
        (figures up to ``max_age`` seconds old will do: see :meth:`Outbox.stats`)."""
        now = self._clock.time()
        stats = await self._outbox.stats(now=now, max_age=max_age)
        for pixel_id in {*self._workers, *stats.depth_by_pixel}:
            self._metrics.queue_depth.labels(pixel_id).set(stats.depth_by_pixel.get(pixel_id, 0))
        oldest = stats.oldest_queued_at
        self._metrics.oldest_queued_age.set(max(0.0, now - oldest) if oldest else 0.0)
        earliest = stats.earliest_deadline
        self._metrics.min_time_to_deadline.set(earliest - now if earliest else 0.0)
        self._dlq_reasons.update(stats.dlq_by_reason)
        for reason in self._dlq_reasons:
            self._metrics.dlq_size.labels(reason).set(stats.dlq_by_reason.get(reason, 0))
