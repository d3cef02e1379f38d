"""One pixel's delivery loop: lease, send, and settle every event by what Meta answered.

Settling rules (the whole point of the gateway, see docs/architecture.md):

* accepted              -> ack
* TRANSIENT (5xx, timeouts, codes 1/2/...) -> reschedule by the retry policy, capped by
                           each event's deadline; no time left -> dead-letter ``expired``
* THROTTLED             -> release (no attempt burned), halve the AIMD limit, pause the
                           pixel for ``retry_after`` (or an escalating default)
* AUTH, pixel CONFIG    -> release, open the breaker; probe with a small batch every
                           ``breaker_probe_seconds`` using the token read afresh
* INVALID, event CONFIG -> bisect until each bad event stands alone; ack every good
                           half, dead-letter each bad event with Meta's error

Bisection sends the left half first.  If it is accepted, the right half must hold
the culprit (the whole batch was refused), so it is split again without being sent;
that keeps the extra requests near ``log2(n)`` per bad event and never above ``2·log2(n)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from capirelay.config import PixelSettings, Settings
from capirelay.delivery.status import AIMDLimit, Breaker, BreakerState, LastError, PixelStatus
from capirelay.graph import EventsResponse, GraphClient, GraphError, RetryClass
from capirelay.metrics import Metrics
from capirelay.outbox import (
    Attempt,
    DeadLetterReason,
    LeasedEvent,
    Outbox,
    StorageUnavailable,
)
from capirelay.retry import RetryPolicy

log = logging.getLogger("capirelay.delivery")

PROBE_BATCH: Final = 10
# Subcodes of code 100 that concern the pixel itself, not one event (100/33: unknown pixel).
PIXEL_LEVEL_SUBCODES_OF_100: Final = frozenset({33})
EVENT_TOO_OLD_SUBCODE: Final = 2804003

ClientFactory = Callable[[PixelSettings | None], GraphClient]


@dataclass(frozen=True, slots=True)
class _FixedDraw:
    """One jitter draw shared by a whole batch, so its events stay together when rescheduled."""

    value: float

    def random(self) -> float:
        return self.value


def is_event_level(err: GraphError) -> bool:
    """Meta refused something inside the events (bisect), not the pixel or token."""
    if err.retry_class is RetryClass.INVALID:
        return True
    return (
        err.retry_class is RetryClass.CONFIG
        and err.code == 100
        and err.subcode not in PIXEL_LEVEL_SUBCODES_OF_100
    )


def dead_letter_reason(err: GraphError) -> DeadLetterReason:
    if err.code == 100 and err.subcode == EVENT_TOO_OLD_SUBCODE:
        return DeadLetterReason.EXPIRED  # Meta's clock says the 7/62-day window has passed
    if err.retry_class is RetryClass.CONFIG:
        return DeadLetterReason.CONFIG
    return DeadLetterReason.INVALID


def attempt_from(err: GraphError, now: float) -> Attempt:
    return Attempt(
        at=now,
        status=err.status,
        code=err.code,
        subcode=err.subcode,
        message=err.message,
        fbtrace_id=err.fbtrace_id,
        retry_class=str(err.retry_class),
    )


class PixelWorker:
    """Leases and delivers one pixel's events; owns its breaker and AIMD limit."""

    def __init__(
        self,
        pixel_id: str,
        *,
        outbox: Outbox,
        settings: Settings,
        metrics: Metrics,
        client_for: ClientFactory,
        clock: Callable[[], float],
        retry_policy: RetryPolicy,
        rng: random.Random,
    ) -> None:
        self.pixel_id = pixel_id
        self._outbox = outbox
        self._settings = settings
        self._delivery = settings.delivery
        self._metrics = metrics
        self._client_for = client_for
        self._clock = clock
        self._policy = retry_policy
        self._rng = rng
        self.breaker = Breaker(probe_interval=self._delivery.breaker_probe_seconds)
        self.aimd = AIMDLimit(ceiling=self._delivery.max_in_flight)
        self.last_error: LastError | None = None
        self._paused_until = 0.0  # monotonic
        self._throttle_streak = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._counts: Counter[str] = Counter()
        self._metrics.send_rate_limit.labels(pixel_id).set(self.aimd.limit)
        self._metrics.breaker_open.labels(pixel_id).set(0)

    # ------------------------------------------------------------- lifecycle

    @property
    def pixel(self) -> PixelSettings | None:
        return self._settings.pixels.get(self.pixel_id)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def idle(self) -> bool:
        return not self._in_flight

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"capirelay-pixel-{self.pixel_id}")

    def notify(self) -> None:
        self._wake.set()

    async def stop(self, timeout: float) -> None:
        """No new leases; let in-flight batches finish, then cancel (and release) the rest."""
        self._stopping = True
        self._stopped.set()
        self._wake.set()
        if self._task is not None:
            # The loop only ever waits on wake/stop or on one outbox call, so it ends promptly.
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._in_flight:
            _, pending = await asyncio.wait(self._in_flight, timeout=max(timeout, 0.0))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def status(self) -> PixelStatus:
        now = time.monotonic()
        return PixelStatus(
            pixel_id=self.pixel_id,
            breaker=self.breaker.state,
            opened_at=self.breaker.opened_at,
            last_error=self.last_error,
            concurrency_limit=self.aimd.limit,
            max_concurrency=self.aimd.ceiling,
            in_flight=len(self._in_flight),
            paused_for_seconds=max(0.0, self._paused_until - now),
            sent=self._counts["sent"],
            requests=self._counts["requests"],
            failed_requests=self._counts["failed_requests"],
            retried=self._counts["retried"],
            dead_lettered=self._counts["dead_lettered"],
            bisect_requests=self._counts["bisect_requests"],
            throttles=self._counts["throttles"],
        )

    # ------------------------------------------------------------ main loop

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if await self._may_lease():
                    await self._lease_and_dispatch()
            except StorageUnavailable as exc:
                log.warning("pixel %s: outbox unavailable, retrying: %s", self.pixel_id, exc)
                await self._sleep_or_wake(self._delivery.poll_seconds)
            except Exception:
                # A bug must not silently end this pixel's deliveries: log it, keep going.
                log.exception("pixel %s: delivery loop error", self.pixel_id)
                await self._sleep_or_wake(self._delivery.poll_seconds)

    async def _may_lease(self) -> bool:
        """Gatekeeping before each lease: token, breaker, throttle pause, in-flight room."""
        token = self._token()
        if token is None:
            self._set_unconfigured()
            await self._sleep_or_wake(self._delivery.poll_seconds)
            return False
        if self.breaker.state is BreakerState.UNCONFIGURED:
            self.breaker.close()
            self._metrics.breaker_open.labels(self.pixel_id).set(0)
            log.info("pixel %s: access token available, delivery starts", self.pixel_id)
        if self.breaker.state is BreakerState.HALF_OPEN:
            await self._wait_in_flight_below(1)
            if self.breaker.state is BreakerState.HALF_OPEN and not self._in_flight:
                # The probe neither proved nor disproved the token (e.g. a 5xx): probe again later.
                self.breaker.trip(time.monotonic(), wall_time=self._clock())
            return False
        if self.breaker.state is BreakerState.OPEN:
            return await self._wait_for_probe()
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            await self._sleep(pause)
            return False
        await self._wait_in_flight_below(self.aimd.limit)
        return not self._stopping

    async def _wait_for_probe(self) -> bool:
        now = time.monotonic()
        if self.breaker.probe_due(now):
            return True
        wait_for = (self.breaker.next_probe_at or now) - now
        await self._sleep(wait_for)
        return False

    async def _lease_and_dispatch(self) -> None:
        probing = self.breaker.state is BreakerState.OPEN
        limit = (
            min(PROBE_BATCH, self._delivery.batch_size) if probing else self._delivery.batch_size
        )
        events = await self._outbox.lease(
            self.pixel_id,
            limit=limit,
            lease_seconds=self._delivery.lease_seconds,
            now=self._clock(),
        )
        if not events:
            await self._idle()
            return
        if probing:
            self.breaker.start_probe()
        live = await self._expire_overdue(events)
        for test_event_code, group in self._by_test_event_code(live).items():
            self._spawn(group, test_event_code)
        if len(events) < limit:
            await self._idle()

    async def _idle(self) -> None:
        """Nothing due: sleep until notified, the next retry is due, or the poll interval."""
        next_due = await self._outbox.next_due_at(self.pixel_id)
        timeout = self._delivery.poll_seconds
        if next_due is not None:
            timeout = min(timeout, max(0.0, next_due - self._clock()))
        woken = await self._sleep_or_wake(timeout)
        if woken and self._delivery.linger_ms and not self._stopping:
            # Let a burst of notifications fill the batch before leasing.
            await asyncio.sleep(self._delivery.linger_ms / 1000)

    async def _sleep_or_wake(self, seconds: float) -> bool:
        """True when woken by :meth:`notify` (or stop) before ``seconds`` passed."""
        if self._stopping:
            return True
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0.0))
        except TimeoutError:
            return False
        finally:
            self._wake.clear()
        return True

    async def _sleep(self, seconds: float) -> None:
        # Only stop interrupts a pause/probe wait; notifications must not shorten it.
        if self._stopping:
            return
        deadline = time.monotonic() + seconds
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            await self._sleep_or_wake(left)

    async def _wait_in_flight_below(self, limit: int) -> None:
        while len(self._in_flight) >= max(limit, 1) and not self._stopping:
            stop_waiter = asyncio.ensure_future(self._stopped.wait())
            try:
                await asyncio.wait(
                    {*self._in_flight, stop_waiter}, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stop_waiter.cancel()

    def _spawn(self, events: list[LeasedEvent], test_event_code: str | None) -> None:
        task = asyncio.create_task(self._deliver(events, test_event_code))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _by_test_event_code(
        self, events: Sequence[LeasedEvent]
    ) -> dict[str | None, list[LeasedEvent]]:
        fallback = self.pixel.test_event_code if self.pixel else None
        groups: dict[str | None, list[LeasedEvent]] = defaultdict(list)
        for event in events:
            groups[event.test_event_code or fallback].append(event)
        return groups

    async def _expire_overdue(self, events: list[LeasedEvent]) -> list[LeasedEvent]:
        now = self._clock()
        overdue = [e for e in events if e.deadline <= now]
        if overdue:
            await self._dead_letter(overdue, DeadLetterReason.EXPIRED, None, now)
        return [e for e in events if e.deadline > now]

    def _token(self) -> str | None:
        pixel = self.pixel
        if pixel is None or pixel.access_token is None:
            return None
        return pixel.access_token.resolve()

    def _set_unconfigured(self) -> None:
        if self.breaker.mark_unconfigured():
            log.error(
                "pixel %s: no access token configured or readable; events stay queued "
                "until one is set (pixels.%s.access_token)",
                self.pixel_id,
                self.pixel_id,
                extra={"pixel": self.pixel_id, "breaker": "unconfigured"},
            )
            self._metrics.breaker_open.labels(self.pixel_id).set(1)

    # ---------------------------------------------------------------- a batch

    async def _deliver(self, events: list[LeasedEvent], test_event_code: str | None) -> None:
        try:
            await self._send_and_settle(events, test_event_code)
        except asyncio.CancelledError:
            # Shutdown ran out of patience: give back whatever is still leased (release
            # only touches rows still leased, so settled ones are unaffected).
            with contextlib.suppress(StorageUnavailable):
                await self._outbox.release([e.id for e in events])
            raise
        except StorageUnavailable as exc:
            # The lease expires and the events come back: delivery stays at-least-once.
            log.error("pixel %s: could not record a delivery outcome: %s", self.pixel_id, exc)
        except Exception:
            log.exception(
                "pixel %s: batch failed unexpectedly; its lease will expire", self.pixel_id
            )

    async def _send_and_settle(self, events: list[LeasedEvent], tec: str | None) -> None:
        token = self._token()
        if token is None:
            await self._outbox.release([e.id for e in events])
            self._set_unconfigured()
            return
        result = await self._send(events, token, tec)
        if isinstance(result, GraphError):
            await self._on_failure(events, result, token, tec)
        else:
            await self._on_success(events)

    async def _send(
        self, events: Sequence[LeasedEvent], token: str, tec: str | None
    ) -> EventsResponse | GraphError:
        client = self._client_for(self.pixel)
        started = time.perf_counter()
        self._counts["requests"] += 1
        try:
            response = await client.send_events(
                self.pixel_id,
                [e.payload for e in events],
                access_token=token,
                test_event_code=tec,
            )
        except GraphError as err:
            self._record_failure(events, err, time.perf_counter() - started)
            return err
        self._record_success(events, response, time.perf_counter() - started)
        self._metrics.delivered(self.pixel_id, events, tec, response.fbtrace_id)
        return response

    def _record_success(
        self, events: Sequence[LeasedEvent], response: EventsResponse, latency: float
    ) -> None:
        pixel = self.pixel_id
        self._metrics.requests.labels(pixel, "ok").inc()
        self._metrics.send_latency.labels(pixel).observe(latency)
        self._metrics.batch_size.labels(pixel).observe(len(events))
        log.info(
            "pixel %s: %d events delivered in %.0f ms (fbtrace_id=%s)",
            pixel,
            len(events),
            latency * 1000,
            response.fbtrace_id,
            extra={
                "pixel": pixel,
                "count": len(events),
                "result": "ok",
                "latency_ms": round(latency * 1000, 1),
                "fbtrace_id": response.fbtrace_id,
            },
        )

    def _record_failure(
        self, events: Sequence[LeasedEvent], err: GraphError, latency: float
    ) -> None:
        pixel = self.pixel_id
        self._counts["failed_requests"] += 1
        self._metrics.requests.labels(pixel, str(err.retry_class)).inc()
        self._metrics.send_latency.labels(pixel).observe(latency)
        self._metrics.batch_size.labels(pixel).observe(len(events))
        self._metrics.meta_errors.labels(
            pixel, str(err.code), str(err.subcode), str(err.retry_class)
        ).inc()
        self.last_error = LastError(
            at=self._clock(),
            status=err.status,
            code=err.code,
            subcode=err.subcode,
            message=err.message,
            fbtrace_id=err.fbtrace_id,
            retry_class=str(err.retry_class),
        )
        log.warning(
            "pixel %s: %d events refused in %.0f ms: %s",
            pixel,
            len(events),
            latency * 1000,
            err,
            extra={
                "pixel": pixel,
                "count": len(events),
                "result": str(err.retry_class),
                "latency_ms": round(latency * 1000, 1),
                "fbtrace_id": err.fbtrace_id,
                "code": err.code,
                "subcode": err.subcode,
            },
        )

    # ------------------------------------------------------------- outcomes

    async def _on_success(self, events: Sequence[LeasedEvent]) -> None:
        await self._outbox.ack([e.id for e in events], now=self._clock())
        self._counts["sent"] += len(events)
        for name, count in Counter(e.event_name for e in events).items():
            self._metrics.sent.labels(self.pixel_id, name).inc(count)
        self._throttle_streak = 0
        self.aimd.on_success()
        self._metrics.send_rate_limit.labels(self.pixel_id).set(self.aimd.limit)
        if self.breaker.state is BreakerState.HALF_OPEN and self.breaker.close():
            self._metrics.breaker_open.labels(self.pixel_id).set(0)
            log.warning(
                "pixel %s: circuit breaker closed, the token works again; delivery resumes",
                self.pixel_id,
                extra={"pixel": self.pixel_id, "breaker": "closed"},
            )
            with contextlib.suppress(StorageUnavailable):
                await self._outbox.unhold_pixel(self.pixel_id)
            self._wake.set()

    async def _on_failure(
        self, events: list[LeasedEvent], err: GraphError, token: str, tec: str | None
    ) -> None:
        if is_event_level(err):
            await self._isolate(events, err, token, tec)
        elif err.retry_class is RetryClass.THROTTLED:
            await self._throttled(events, err)
        elif err.retry_class in (RetryClass.AUTH, RetryClass.CONFIG):
            await self._trip_breaker(events, err)
        else:
            await self._retry_later(events, err)

    async def _retry_later(self, events: Sequence[LeasedEvent], err: GraphError) -> None:
        now = self._clock()
        attempt = attempt_from(err, now)
        draw = _FixedDraw(self._rng.random())
        due_at: dict[float, list[int]] = defaultdict(list)
        expired: list[LeasedEvent] = []
        for event in events:
            when = self._policy.next_attempt_at(event.attempts + 1, now, event.deadline, draw)
            if when is None:
                expired.append(event)
            else:
                due_at[when].append(event.id)
        for when, ids in due_at.items():
            await self._outbox.reschedule(ids, next_attempt_at=when, attempt=attempt)
        retried = len(events) - len(expired)
        self._counts["retried"] += retried
        self._metrics.retries.labels(self.pixel_id, str(err.retry_class)).inc(retried)
        if expired:
            await self._dead_letter(expired, DeadLetterReason.EXPIRED, attempt, now)

    async def _throttled(self, events: Sequence[LeasedEvent], err: GraphError) -> None:
        await self._outbox.release([e.id for e in events])
        self._counts["throttles"] += 1
        self._metrics.retries.labels(self.pixel_id, str(err.retry_class)).inc(len(events))
        self._throttle_streak += 1
        self.aimd.on_throttle()
        self._metrics.send_rate_limit.labels(self.pixel_id).set(self.aimd.limit)
        # Meta's own estimate wins; without one, pause longer on each throttle in a row.
        pause = err.retry_after
        if pause is None:
            pause = self._policy.ceiling(self._throttle_streak)
        pause = min(pause, self._policy.max_delay)
        self._paused_until = max(self._paused_until, time.monotonic() + pause)
        await self._hold_everywhere(pause, "throttle", err)

    async def _trip_breaker(self, events: Sequence[LeasedEvent], err: GraphError) -> None:
        await self._outbox.release([e.id for e in events])
        tripped = self.breaker.trip(time.monotonic(), wall_time=self._clock())
        await self._hold_everywhere(self.breaker.probe_interval, "breaker", err)
        if tripped:
            self._metrics.breaker_open.labels(self.pixel_id).set(1)
            log.error(
                "pixel %s: circuit breaker OPEN, delivery paused and events kept queued "
                "(code=%s subcode=%s fbtrace_id=%s): %s",
                self.pixel_id,
                err.code,
                err.subcode,
                err.fbtrace_id,
                err.explanation,
                extra={
                    "pixel": self.pixel_id,
                    "breaker": "open",
                    "code": err.code,
                    "subcode": err.subcode,
                    "fbtrace_id": err.fbtrace_id,
                },
            )

    async def _hold_everywhere(self, seconds: float, reason: str, err: GraphError) -> None:
        """Ask the other replicas sharing the outbox (if any) not to lease this pixel for
        ``seconds`` either: a revoked token is discovered once, not once per replica."""
        now = self._clock()
        with contextlib.suppress(StorageUnavailable):
            await self._outbox.hold_pixel(
                self.pixel_id,
                until=now + seconds,
                reason=reason,
                now=now,
                code=err.code,
                subcode=err.subcode,
            )

    async def _isolate(
        self, events: list[LeasedEvent], err: GraphError, token: str, tec: str | None
    ) -> None:
        """Split a refused batch until each bad event stands alone (see module docstring)."""
        if len(events) == 1:
            await self._dead_letter(
                events, dead_letter_reason(err), attempt_from(err, self._clock())
            )
            return
        middle = len(events) // 2
        left, right = events[:middle], events[middle:]
        left_result = await self._bisect_send(left, token, tec)
        if not isinstance(left_result, GraphError):
            await self._on_success(left)
            await self._isolate(right, err, token, tec)
            return
        if not is_event_level(left_result):
            # Meta's answer changed class mid-bisection (outage, throttle, token): the
            # unsent right half shares the left half's fate.
            await self._on_failure(left + right, left_result, token, tec)
            return
        await self._isolate(left, left_result, token, tec)
        right_result = await self._bisect_send(right, token, tec)
        if isinstance(right_result, GraphError):
            await self._on_failure(right, right_result, token, tec)
        else:
            await self._on_success(right)

    async def _bisect_send(
        self, events: Sequence[LeasedEvent], token: str, tec: str | None
    ) -> EventsResponse | GraphError:
        self._counts["bisect_requests"] += 1
        self._metrics.bisect_requests.labels(self.pixel_id).inc()
        return await self._send(events, token, tec)

    async def _dead_letter(
        self,
        events: Sequence[LeasedEvent],
        reason: DeadLetterReason,
        attempt: Attempt | None,
        now: float | None = None,
    ) -> None:
        at = self._clock() if now is None else now
        await self._outbox.dead_letter(
            [e.id for e in events], reason=reason, attempt=attempt, now=at
        )
        self._counts["dead_lettered"] += len(events)
        self._metrics.dead_lettered.labels(self.pixel_id, str(reason)).inc(len(events))
        log.warning(
            "pixel %s: %d events dead-lettered (%s, code=%s subcode=%s fbtrace_id=%s)",
            self.pixel_id,
            len(events),
            reason,
            attempt.code if attempt else None,
            attempt.subcode if attempt else None,
            attempt.fbtrace_id if attempt else None,
            extra={"pixel": self.pixel_id, "count": len(events), "result": f"dlq:{reason}"},
        )
