"""Meta's diagnostics on a schedule, inside the gateway: checks, settings, sent versus counted.

Every ``diagnostics.interval_seconds`` (default hourly, ±``jitter``) one replica
(the holder of the ``meta-diagnostics`` lease row, so one at a time even on a
shared PostgreSQL) fetches, per configured pixel with a token:

0. the token's expiry (``GET /debug_token``): one that expires within 14 days is a
   failing ``capirelay:token_expiring`` check, logged and counted like Meta's, so a
   running gateway warns before its deliveries stop (before, only ``capirelay doctor``
   and the dashboard said it, when someone looked);
1. the pixel's AAM and first-party cookie settings (``GET /{pixel}``);
2. the server diagnostics checks (``GET /{pixel}/da_checks?connection_method=SERVER``);
3. the Dataset Quality API's ``diagnostics``, ``dedupe_key_feedback`` and
   ``data_freshness``;
4. ``/stats`` by ``event_source``, ``event_processing_results`` and ``had_pii``
   for the last ``lookback_hours``, reconciled with what capirelay delivered
   (:mod:`capirelay.ops.reconcile`).

Every finding becomes a check (Meta's own, or capirelay's ``capirelay:*``),
stored with its latest state and a history of transitions
(:mod:`capirelay.ops.meta_store`).  A check that starts or stops failing is logged
and counted; ``capirelay_meta_diagnostics_failing{pixel,key}`` holds the
current state.  A step whose call fails leaves its previous checks as they
were (no false "resolved"); a throttled answer ends the run until next time.

What capirelay delivered comes from :class:`DeliveredRecorder`, a listener on
Meta's ``events_received``, flushed to the per-hour table every five minutes,
before every run and on shutdown.  Counts of a process killed before a flush
are lost, which can only make the undercount alert quieter, never louder.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import httpx

from capirelay.config import Settings, token_replace_hint
from capirelay.graph import GraphClient, GraphError, RetryClass
from capirelay.graph._pixel import DACheck, StatsBucket
from capirelay.metrics import Metrics
from capirelay.ops.health import TOKEN_EXPIRY_WARN_DAYS, token_from_debug_data
from capirelay.ops.meta_advice import (
    AAM_OFF,
    COOKIES_DISABLED,
    HAD_PII,
    TOKEN_EXPIRING,
    UNDERCOUNT,
    dq_key,
    explain_settings_error,
)
from capirelay.ops.meta_store import CheckChange, CheckResult, DeliveredHour, MetaStore
from capirelay.ops.reconcile import HOUR, Reconciliation, reconcile
from capirelay.outbox.base import LeasedEvent
from capirelay.tasks import cancel_and_wait

__all__ = ["LEASE_NAME", "DeliveredRecorder", "DiagnosticsRunner", "PixelRun"]

log = logging.getLogger("capirelay.diagnostics")

LEASE_NAME: Final = "meta-diagnostics"
GRAPH_TIMEOUT: Final = 10.0
STATS_AGGREGATIONS: Final = ("event_source", "event_processing_results", "had_pii")
KEEP_DELIVERED_SECONDS: Final = 8 * 24 * HOUR  # /stats reaches back seven days
FLUSH_SECONDS: Final = 300.0


class DeliveredRecorder:
    """Counts acknowledged events per (pixel, event name, hour) in memory until flushed.

    When ``events_received`` is lower than the batch, the acknowledged count is
    shared out over the batch's event names in proportion (largest first).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: Counter[tuple[str, str, int, str]] = Counter()

    def __call__(self, pixel_id: str, events: Sequence[LeasedEvent], received: int) -> None:
        hour = int(self._clock() // HOUR) * HOUR
        names = Counter(e.event_name for e in events)
        acked = _share_out(names, min(received, len(events)))
        with self._lock:
            for name, count in names.items():
                self._pending[(pixel_id, name, hour, "sent")] += count
                self._pending[(pixel_id, name, hour, "acknowledged")] += acked.get(name, 0)

    def take(self) -> list[DeliveredHour]:
        with self._lock:
            pending, self._pending = self._pending, Counter()
        rows: dict[tuple[str, str, int], list[int]] = {}
        for (pixel, name, hour, kind), count in pending.items():
            pair = rows.setdefault((pixel, name, hour), [0, 0])
            pair[0 if kind == "sent" else 1] += count
        return [DeliveredHour(p, n, h, s, a) for (p, n, h), (s, a) in sorted(rows.items())]

    def give_back(self, rows: Sequence[DeliveredHour]) -> None:
        """Re-add rows whose flush failed, so the next flush writes them."""
        with self._lock:
            for row in rows:
                self._pending[(row.pixel_id, row.event_name, row.hour, "sent")] += row.sent
                key = (row.pixel_id, row.event_name, row.hour, "acknowledged")
                self._pending[key] += row.acknowledged

    async def flush(self, store: MetaStore) -> None:
        rows = self.take()
        try:
            await store.add_delivered(rows)
        except Exception:
            self.give_back(rows)
            raise


def _undercount_check(result: Reconciliation) -> CheckResult:
    """Sent versus counted as a check (see :mod:`capirelay.ops.reconcile` for the rule).

    A gap no larger than Meta's deduplicated count is a ``warning`` that does not fail:
    whether Meta's SERVER count leaves deduplicated server copies out is not documented,
    so the message says what may explain it and where to look, and claims neither."""
    counted = (
        f"{result.acknowledged} acknowledged, {result.server} counted as server events, "
        f"{result.deduplicated} reported deduplicated in settled hours"
    )
    tolerance = f"tolerance {result.tolerance:.0%}"
    if result.undercount:
        short = [t for t in result.by_event_name() if t.unexplained]
        named = "; ".join(
            f"{t.event_name}: {t.acknowledged} acknowledged, {t.server} counted, "
            f"{t.deduplicated} deduplicated, {t.unexplained} missing"
            for t in short[:3]
        ) + (f"; and {len(short) - 3} more event names" if len(short) > 3 else "")
        return CheckResult(
            UNDERCOUNT,
            "reconciliation",
            True,
            "failed",
            "Meta counts fewer server events than it acknowledged",
            f"{result.unexplained} events ({result.unexplained_ratio:.1%} of "
            f"{result.acknowledged} acknowledged in settled hours) missing beyond what "
            f"deduplication could explain ({tolerance}). {named}",
        )
    if result.gap_within_dedup:
        return CheckResult(
            UNDERCOUNT,
            "reconciliation",
            False,
            "warning",
            "Meta counts fewer server events than it acknowledged, within its deduplicated count",
            f"{counted}: {result.gap} ({result.gap_ratio:.1%}) missing ({tolerance}). Meta does "
            "not document whether a server copy deduplicated against the Pixel's event stays "
            "in its server count; if it does not, deduplicated events may be what is missing "
            "here. Check the dedup rate of the same hours first: a gap that follows it is "
            "dedup working, one that does not is events lost",
        )
    return CheckResult(
        UNDERCOUNT,
        "reconciliation",
        False,
        "passed",
        "Meta counts fewer server events than it acknowledged",
        f"{counted}: {result.gap} ({result.gap_ratio:.1%}) missing ({tolerance})",
    )


def _share_out(names: Counter[str], total: int) -> dict[str, int]:
    count = sum(names.values())
    if total >= count:
        return dict(names)
    shares = {name: n * total // count for name, n in names.items()}
    left = total - sum(shares.values())
    for name, _n in names.most_common():
        if left <= 0:
            break
        shares[name] += 1
        left -= 1
    return shares


@dataclass(slots=True)
class PixelRun:
    """What one run found for one pixel."""

    pixel_id: str
    checks: list[CheckResult] = field(default_factory=list)
    changes: list[CheckChange] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    reconciliation: Reconciliation | None = None


class DiagnosticsRunner:
    """Runs the schedule (``start``/``stop``) or one run on demand (:meth:`run_once`)."""

    def __init__(
        self,
        settings: Settings,
        store: MetaStore,
        metrics: Metrics,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        holder: str | None = None,
        recorder: DeliveredRecorder | None = None,
    ) -> None:
        self._settings = settings
        self._config = settings.diagnostics
        self._store = store
        self._metrics = metrics
        self._transport = transport
        self._clock = clock
        self._rng = rng or random.Random()
        self.holder = holder or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.recorder = recorder or DeliveredRecorder(clock)
        self._task: asyncio.Task[None] | None = None

    # -- schedule ------------------------------------------------------------

    def next_delay(self, *, first: bool = False) -> float:
        base = self._config.first_run_seconds if first else self._config.interval_seconds
        spread = base * self._config.jitter
        return max(0.0, base + self._rng.uniform(-spread, spread))

    def start(self) -> None:
        self._metrics.acknowledged_listeners.append(self.recorder)
        if self._config.enabled and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="capirelay-meta-diagnostics")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self.recorder in self._metrics.acknowledged_listeners:
            self._metrics.acknowledged_listeners.remove(self.recorder)
        try:
            await self.recorder.flush(self._store)
        except Exception as exc:
            log.warning("diagnostics: could not store delivered counts at shutdown: %s", exc)
        # The schedule's lease outlives a run by half an interval so that no other replica
        # runs meanwhile; left behind by a stopped process, it kept the restarted gateway
        # (or any other replica) from running the checks for up to 90 minutes.  Released
        # only if this process holds it; a killed process's lease still runs out.
        try:
            await self._store.release_lease(LEASE_NAME, self.holder)
        except Exception as exc:
            log.warning("diagnostics: could not release the schedule at shutdown: %s", exc)

    async def _loop(self) -> None:
        # Delivered counts are flushed every FLUSH_SECONDS between runs, so a killed
        # process loses at most that much of them.
        due = time.monotonic() + self.next_delay(first=True)
        while True:
            await asyncio.sleep(max(0.0, min(FLUSH_SECONDS, due - time.monotonic())))
            if time.monotonic() < due:
                try:
                    await self.recorder.flush(self._store)
                except Exception as exc:
                    log.warning("diagnostics: could not store delivered counts: %s", exc)
                continue
            try:
                await self.run_once()
            except Exception:
                log.exception("diagnostics run failed; next run as scheduled")
            due = time.monotonic() + self.next_delay()

    # -- one run -------------------------------------------------------------

    async def run_once(self) -> list[PixelRun] | None:
        """Flush delivered counts, then (if this process holds the lease) check every pixel.

        None when another replica holds the lease.
        """
        await self.recorder.flush(self._store)
        now = self._clock()
        ttl = self._config.interval_seconds * 1.5
        if not await self._store.acquire_lease(LEASE_NAME, self.holder, now=now, ttl=ttl):
            log.debug("diagnostics: another replica holds the schedule")
            return None
        await self._store.forget_delivered(int(now - KEEP_DELIVERED_SECONDS))
        runs = []
        for pixel_id, pixel in self._settings.pixels.items():
            token = pixel.access_token.resolve() if pixel.access_token else None
            if token is not None:
                runs.append(await self._run_pixel(pixel_id, token, now))
        return runs

    async def _run_pixel(self, pixel_id: str, token: str, now: float) -> PixelRun:
        pixel = self._settings.pixels[pixel_id]
        app_secret = pixel.app_secret.resolve() if pixel.app_secret else None
        run = PixelRun(pixel_id)
        kept: set[str] = set()
        async with GraphClient(
            api_version=pixel.api_version,
            base_url=self._settings.graph_url,
            timeout=GRAPH_TIMEOUT,
            app_secret=app_secret,
            transport=self._transport,
        ) as pixel_client:
            steps = (
                ("token", self._token_step),
                ("pixel_settings", self._settings_step),
                ("da_checks", self._da_checks_step),
                ("dataset_quality", self._dataset_quality_step),
                ("reconciliation", self._stats_step),
            )
            for name, step in steps:
                try:
                    await step(pixel_client, pixel_id, token, now, run)
                except GraphError as err:
                    run.errors[name] = explain_settings_error(err, pixel_id)
                    kept.add(name)
                    if err.retry_class is RetryClass.THROTTLED:
                        kept.update(s for s, _ in steps)
                        break
        run.changes = await self._store.save_checks(
            pixel_id, run.checks, now=now, keep=frozenset(kept)
        )
        run.summary["errors"] = run.errors
        await self._store.save_run(
            pixel_id,
            ran_at=now,
            error="; ".join(f"{k}: {v}" for k, v in run.errors.items()) or None,
            summary=run.summary,
        )
        self._observe(run)
        return run

    async def _token_step(
        self, client: GraphClient, pixel_id: str, token: str, now: float, run: PixelRun
    ) -> None:
        try:
            answer = await client.debug_token(token, access_token=token)
        except GraphError as err:
            if err.retry_class is RetryClass.AUTH:
                return  # a bad token: the next steps' errors and delivery's breaker say it
            raise
        health = token_from_debug_data(pixel_id, answer.get("data") or {}, token)
        if health.valid is False:
            return
        days = health.days_left(datetime.fromtimestamp(now, UTC))
        expiring = days is not None and days < TOKEN_EXPIRY_WARN_DAYS
        if health.expires_at is None:
            message = "the token does not expire"
        else:
            message = f"expires_at: {health.expires_at.isoformat(timespec='seconds')}"
            hint = token_replace_hint(pixel_id, self._settings.pixels[pixel_id])
            if expiring and hint is not None:
                message += f"; {hint}"
        run.checks.append(
            CheckResult(
                TOKEN_EXPIRING,
                "token",
                expiring,
                "failed" if expiring else "passed",
                f"The access token expires in {max(days or 0.0, 0.0):.0f} days"
                if expiring
                else "Access token expiry",
                message,
            )
        )

    async def _settings_step(
        self, client: GraphClient, pixel_id: str, token: str, now: float, run: PixelRun
    ) -> None:
        found = await client.pixel_settings(pixel_id, access_token=token)
        run.summary["settings"] = found.to_dict()
        fields = ", ".join(found.automatic_matching_fields) or "no fields"
        run.checks.append(
            CheckResult(
                AAM_OFF,
                "pixel_settings",
                not found.aam_on,
                "failed" if not found.aam_on else "passed",
                "Automatic Advanced Matching is off" if not found.aam_on else "AAM is on",
                "enable_automatic_matching is false"
                if not found.aam_on
                else f"automatic_matching_fields: {fields}",
            )
        )
        status = found.first_party_cookie_status or "unknown"
        run.checks.append(
            CheckResult(
                COOKIES_DISABLED,
                "pixel_settings",
                found.cookies_disabled,
                "failed" if found.cookies_disabled else "passed",
                "First-party cookies are disabled"
                if found.cookies_disabled
                else "First-party cookies",
                f"first_party_cookie_status: {status}",
            )
        )

    async def _da_checks_step(
        self, client: GraphClient, pixel_id: str, token: str, now: float, run: PixelRun
    ) -> None:
        checks: list[DACheck] = await client.da_checks(pixel_id, access_token=token)
        for check in checks:
            run.checks.append(
                CheckResult(
                    check.key,
                    "da_checks",
                    check.failing,
                    check.result or "unknown",
                    check.title or check.key,
                    check.user_message or check.description,
                    check.action_uri,
                )
            )

    async def _dataset_quality_step(
        self, client: GraphClient, pixel_id: str, token: str, now: float, run: PixelRun
    ) -> None:
        answer = await client.dataset_quality(pixel_id, access_token=token)
        entries = answer.get("web")
        quality: dict[str, Any] = {}
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not entry.get("event_name"):
                continue
            name = str(entry["event_name"])
            emq = entry.get("event_match_quality")
            diagnostics = emq.get("diagnostics") if isinstance(emq, dict) else None
            for item in diagnostics if isinstance(diagnostics, list) else []:
                if not isinstance(item, dict) or not item.get("title"):
                    continue
                title = str(item["title"])
                run.checks.append(
                    CheckResult(
                        dq_key(name, title),
                        "dataset_quality",
                        True,
                        "warning",
                        f"{name}: {title}",
                        str(item.get("description") or ""),
                    )
                )
            quality[name] = {
                "dedupe_key_feedback": entry.get("dedupe_key_feedback")
                or entry.get("dedup_key_feedback")
                or [],
                "data_freshness": entry.get("data_freshness") or {},
            }
        run.summary["dataset_quality"] = quality

    async def _stats_step(
        self, client: GraphClient, pixel_id: str, token: str, now: float, run: PixelRun
    ) -> None:
        end = (int(now // HOUR) + 1) * HOUR
        start = end - (self._config.lookback_hours + 1) * HOUR
        buckets: list[StatsBucket] = []
        for aggregation in STATS_AGGREGATIONS:
            buckets.extend(
                await client.pixel_stats(
                    pixel_id,
                    access_token=token,
                    aggregation=aggregation,
                    start_time=start,
                    end_time=end,
                )
            )
        delivered = await self._store.delivered(pixel_id, start, end)
        result = reconcile(
            delivered,
            buckets,
            now=now,
            lag_hours=self._config.reporting_lag_hours,
            tolerance=self._config.tolerance,
            min_events=self._config.min_events,
        )
        run.reconciliation = result
        run.summary["reconciliation"] = result.to_dict()
        run.checks.append(_undercount_check(result))
        run.checks.append(
            CheckResult(
                HAD_PII,
                "reconciliation",
                result.had_pii > 0,
                "failed" if result.had_pii else "passed",
                "Events with unhashed personal data",
                f"Meta reports {result.had_pii} event(s) with unhashed personal data in the "
                f"last {self._config.lookback_hours} h",
            )
        )

    def _observe(self, run: PixelRun) -> None:
        pixel = run.pixel_id
        m = self._metrics
        for check in run.checks:
            m.meta_diagnostics_failing.labels(pixel, check.key).set(1 if check.failing else 0)
        for change in run.changes:
            state = "failing" if change.failing else "passing"
            m.meta_diagnostics_transitions.labels(pixel, change.key, state).inc()
            if not change.failing:
                m.meta_diagnostics_failing.labels(pixel, change.key).set(0)
            log.log(
                logging.WARNING if change.failing else logging.INFO,
                "pixel %s: Meta check %s %s: %s (%s)",
                pixel,
                change.key,
                "started failing" if change.failing else "stopped failing",
                change.title,
                change.message,
                extra={"pixel": pixel, "result": f"diagnostics:{state}"},
            )
        for step in run.errors:
            m.meta_diagnostics_runs.labels(pixel, step).inc()
        if not run.errors:
            m.meta_diagnostics_runs.labels(pixel, "ok").inc()
        result = run.reconciliation
        if result is not None:
            m.meta_reconciliation_gap.labels(pixel).set(result.gap_ratio)
            m.meta_reconciliation_alert.labels(pixel, "undercount").set(int(result.undercount))
            m.meta_reconciliation_alert.labels(pixel, "had_pii").set(int(result.had_pii > 0))
