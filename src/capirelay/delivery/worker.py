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
* UNKNOWN               -> like AUTH: release, open the breaker, alert; an error that
                           names no event is no evidence against the events

Which errors are the events' (may split a batch, may dead-letter) is decided by one
table beside :func:`capirelay.graph.errors.classify`: code 100 with an event-data
subcode listed in ``CODE_100_SUBCODES``, or an error whose message names an event.

Bisection sends the left half first.  If it is accepted, the right half must hold
the culprit (the whole batch was refused), so it is split again without being sent;
that keeps the extra requests near ``log2(n)`` per bad event and never above
``2·log2(n) + 1``.  An event is only ever dead-lettered with an error Meta gave for
that event sent alone: a lone event reached by inference is sent once more first,
so a refusal that had nothing to do with it (a passing request-level error) cannot
send it to the dead-letter queue.  One exception to "dead-letter the lone event":
100/2804001 (malformed ``fbc``): Meta's guidance is to drop the click id and send
again, once; only if that is refused too is the event dead-lettered.

A batch is handled only while its lease holds: each request is capped so that it
ends with a safety margin before the lease expires, the lease is extended while
bisection runs when the outbox can do that (``extend_lease``), and otherwise the
undecided remainder is released rather than sent after another worker could have
leased the same rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from capirelay.config import PixelSettings, Settings
from capirelay.delivery.status import AIMDLimit, Breaker, BreakerState, LastError, PixelStatus
from capirelay.graph import EventsResponse, GraphClient, GraphError, RetryClass
from capirelay.graph.errors import dead_letter_kind, is_event_level
from capirelay.metrics import Metrics
from capirelay.outbox import (
    Attempt,
    DeadLetterReason,
    LeasedEvent,
    Outbox,
    StorageUnavailable,
)
from capirelay.outbox.receipts import MetaAnswer
from capirelay.retry import RetryPolicy

log = logging.getLogger("capirelay.delivery")

PROBE_BATCH: Final = 10
MALFORMED_FBC_SUBCODE: Final = 2804001  # see CODE_100_SUBCODES in capirelay.graph.errors
# Part of each lease kept free for recording outcomes after the last request ends.
LEASE_MARGIN_SHARE: Final = 0.25
LEASE_MARGIN_MAX_SECONDS: Final = 10.0
# httpx applies request_timeout per phase (connect, write, read), so one request may take a
# few timeouts; the worker caps the whole request at this many, and never past the lease.
REQUEST_CAP_TIMEOUTS: Final = 3.0
ClientFactory = Callable[[PixelSettings | None], GraphClient]


@dataclass(frozen=True, slots=True)
class _FixedDraw:
    """One jitter draw shared by a whole batch, so its events stay together when rescheduled."""

    value: float

    def random(self) -> float:
        return self.value


def dead_letter_reason(err: GraphError) -> DeadLetterReason:
    """Why an event Meta refused alone goes to the DLQ (100/2804003: Meta's clock says
    the 7/62-day window has passed, so ``expired``); from the table in graph.errors."""
    return DeadLetterReason(dead_letter_kind(err))


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


def without_fbc(payload: bytes) -> bytes | None:
    """The event without ``user_data.fbc``; None when it has no fbc to drop."""
    event: Any = orjson.loads(payload)
    user_data = event.get("user_data") if isinstance(event, dict) else None
    if not isinstance(user_data, dict) or "fbc" not in user_data:
        return None
    event["user_data"] = {k: v for k, v in user_data.items() if k != "fbc"}
    return orjson.dumps(event)


def _by_lease(events: Sequence[LeasedEvent]) -> dict[str, list[int]]:
    """Event ids grouped by the lease that handed them out (settling is per lease)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for event in events:
        groups[event.lease_id].append(event.id)
    return groups


class _LeaseRunningOut(Exception):
    """Too little of the batch's lease is left to send another request and record it."""


@dataclass(slots=True)
class _Batch:
    """One leased group on its way through send and bisection."""

    events: list[LeasedEvent]
    sent_at: float = 0.0  # wall time the latest request of this batch started
    sends: int = 0
    # Meta's answer to the latest accepted request of this batch (for the receipts).
    answer: MetaAnswer | None = None


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
        lease = self._delivery.lease_seconds
        self._lease_margin = min(lease * LEASE_MARGIN_SHARE, LEASE_MARGIN_MAX_SECONDS)
        self._request_cap = min(
            REQUEST_CAP_TIMEOUTS * self._delivery.request_timeout,
            (lease - self._lease_margin) / 2,
        )
        # Shrinks when a bisection outlasts its lease, so the next one fits in it.
        self._batch_limit = self._delivery.batch_size
        # Leased rows not yet settled -> when their lease expires (outbox clock).
        self._leased_until: dict[int, float] = {}
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
        limit = min(PROBE_BATCH, self._batch_limit) if probing else self._batch_limit
        now = self._clock()
        events = await self._outbox.lease(
            self.pixel_id,
            limit=limit,
            lease_seconds=self._delivery.lease_seconds,
            now=now,
        )
        if not events:
            await self._idle()
            return
        until = now + self._delivery.lease_seconds
        self._leased_until.update((e.id, until) for e in events)
        live = await self._expire_overdue(events)
        # A probe needs a live event: a batch that was all past its deadline proved nothing
        # about the token, so the probe stays due and the next lease follows at once.
        if probing and live:
            self.breaker.start_probe()
        elif probing:
            await self._probe_again_now()
        for test_event_code, group in self._by_test_event_code(live).items():
            self._spawn(group, test_event_code)
        if len(events) < limit:
            await self._idle()

    async def _probe_again_now(self) -> None:
        """A shared outbox (PostgreSQL) re-arms the breaker hold for a whole probe interval
        when it hands out the probe batch; that batch proved nothing, so end the hold now
        (keeping it a breaker hold, so replicas still probe one at a time)."""
        now = self._clock()
        last = self.last_error
        with contextlib.suppress(StorageUnavailable):
            await self._outbox.unhold_pixel(self.pixel_id)
            await self._outbox.hold_pixel(
                self.pixel_id,
                until=now,
                reason="breaker",
                now=now,
                code=last.code if last else None,
                subcode=last.subcode if last else None,
            )

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
        batch = _Batch(events)
        try:
            await self._send_and_settle(batch, test_event_code)
        except asyncio.CancelledError:
            # Shutdown ran out of patience: give back whatever is still leased.
            with contextlib.suppress(StorageUnavailable):
                await self._release(self._unsettled(batch))
            raise
        except StorageUnavailable as exc:
            # The lease expires and the events come back: delivery stays at-least-once.
            log.error("pixel %s: could not record a delivery outcome: %s", self.pixel_id, exc)
        except Exception:
            log.exception(
                "pixel %s: batch failed unexpectedly; its lease will expire", self.pixel_id
            )
        finally:
            for event in events:
                self._leased_until.pop(event.id, None)

    async def _send_and_settle(self, batch: _Batch, tec: str | None) -> None:
        events = batch.events
        token = self._token()
        if token is None:
            await self._release(events)
            self._set_unconfigured()
            return
        try:
            result = await self._send(events, token, tec, batch)
            if isinstance(result, GraphError):
                await self._on_failure(events, result, token, tec, batch)
            else:
                await self._on_success(events, batch)
            self._batch_limit = min(self._delivery.batch_size, self._batch_limit * 2)
        except _LeaseRunningOut:
            # Without a lease heartbeat, smaller batches are what lets bisection finish
            # (and make progress) inside one lease.
            self._batch_limit = max(1, len(events) // 2)
            undecided = self._unsettled(batch)
            log.warning(
                "pixel %s: lease nearly over, %d undecided events given back for another try",
                self.pixel_id,
                len(undecided),
                extra={"pixel": self.pixel_id, "count": len(undecided), "result": "released"},
            )
            await self._release(undecided)

    def _unsettled(self, batch: _Batch) -> list[LeasedEvent]:
        return [e for e in batch.events if e.id in self._leased_until]

    async def _send(
        self, events: Sequence[LeasedEvent], token: str, tec: str | None, batch: _Batch
    ) -> EventsResponse | GraphError:
        budget = await self._request_budget(batch)
        client = self._client_for(self.pixel)
        batch.sends += 1
        batch.sent_at = self._clock()
        started = time.perf_counter()
        self._counts["requests"] += 1
        try:
            async with asyncio.timeout(budget):
                response = await client.send_events(
                    self.pixel_id,
                    [e.payload for e in events],
                    access_token=token,
                    test_event_code=tec,
                )
        except GraphError as err:
            self._record_failure(events, err, time.perf_counter() - started)
            return err
        except TimeoutError as exc:
            # Cut short so that it cannot outlive the lease: an ordinary transient failure.
            cut = GraphError.transport("timeout before the lease ends", exc)
            self._record_failure(events, cut, time.perf_counter() - started)
            return cut
        self._record_success(events, response, time.perf_counter() - started)
        batch.answer = MetaAnswer(response.fbtrace_id, response.events_received, batch.sent_at)
        self._metrics.delivered(self.pixel_id, events, tec, response.fbtrace_id)
        if tec is None:
            self._metrics.acknowledged(self.pixel_id, events, response.events_received)
        return response

    async def _request_budget(self, batch: _Batch) -> float:
        """Seconds the next request of ``batch`` may take, or :class:`_LeaseRunningOut`.

        The batch's first request only needs some lease left; a later one (bisection)
        needs room for a whole capped request, after trying to extend the lease.
        """
        needed = 0.0 if batch.sends == 0 else self._request_cap
        left = self._lease_left(batch)
        if batch.sends and left < max(needed, self._delivery.lease_seconds / 2):
            await self._extend_lease(batch)
            left = self._lease_left(batch)
        if left <= 0 or left < needed:
            raise _LeaseRunningOut
        return min(self._request_cap, left)

    def _lease_left(self, batch: _Batch) -> float:
        """Lease time left for the batch's unsettled events, less the settling margin."""
        expiries = [self._leased_until[e.id] for e in batch.events if e.id in self._leased_until]
        if not expiries:
            return 0.0
        return min(expiries) - self._clock() - self._lease_margin

    async def _extend_lease(self, batch: _Batch) -> None:
        """Heartbeat for a long bisection: extend the lease of the batch's unsettled rows.

        Rows the outbox does not extend are no longer ours (their lease lapsed and
        another worker took them): they count as settled here and the batch stops
        (:class:`_LeaseRunningOut`), giving back only what this lease still holds.
        """
        now = self._clock()
        until = now + self._delivery.lease_seconds
        lost: list[int] = []
        for lease_id, ids in _by_lease(self._unsettled(batch)).items():
            try:
                extended = set(
                    await self._outbox.extend_lease(ids, until=until, now=now, lease_id=lease_id)
                )
            except StorageUnavailable:
                return  # keep the old expiry; the batch gives its rows back in time
            for event_id in ids:
                if event_id in extended:
                    self._leased_until[event_id] = until
                else:
                    lost.append(event_id)
        if lost:
            self._settled(lost)
            raise _LeaseRunningOut

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
        missing = len(events) - response.events_received
        if missing > 0:
            # Meta took the request but counted fewer events than were sent; nothing to
            # retry (the request succeeded), but it must be visible.
            self._metrics.unconfirmed.labels(pixel).inc(missing)
            log.warning(
                "pixel %s: Meta counted %d of %d events sent (fbtrace_id=%s)",
                pixel,
                response.events_received,
                len(events),
                response.fbtrace_id,
                extra={
                    "pixel": pixel,
                    "count": len(events),
                    "result": "ok:unconfirmed",
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

    async def _on_success(self, events: Sequence[LeasedEvent], batch: _Batch) -> None:
        await self._ack(events, batch.answer)
        self._counts["sent"] += len(events)
        for name, count in Counter(e.event_name for e in events).items():
            self._metrics.sent.labels(self.pixel_id, self._metrics.event_label(name)).inc(count)
        self._throttle_streak = 0
        self.aimd.on_success()
        self._metrics.send_rate_limit.labels(self.pixel_id).set(self.aimd.limit)
        await self._close_breaker_if_proven(batch.sent_at)

    async def _close_breaker_if_proven(self, sent_at: float) -> None:
        """A request sent after the breaker opened went through: the token works again.

        Checked from OPEN as well as HALF_OPEN: an older batch failing while the probe is
        in flight re-opens the breaker, and the probe's success must still close it.
        """
        opened_at = self.breaker.opened_at
        if self.breaker.state not in (BreakerState.OPEN, BreakerState.HALF_OPEN):
            return
        if opened_at is not None and sent_at < opened_at:
            return
        self.breaker.close()
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
        self,
        events: list[LeasedEvent],
        err: GraphError,
        token: str,
        tec: str | None,
        batch: _Batch,
    ) -> None:
        if is_event_level(err):
            await self._isolate(events, err, token, tec, batch, sent_together=True)
        elif err.retry_class is RetryClass.THROTTLED:
            await self._throttled(events, err)
        elif err.retry_class in (RetryClass.AUTH, RetryClass.CONFIG, RetryClass.UNKNOWN):
            await self._trip_breaker(events, err)
        else:
            await self._retry_later(events, err)

    async def _retry_later(self, events: Sequence[LeasedEvent], err: GraphError) -> None:
        now = self._clock()
        attempt = attempt_from(err, now)
        draw = _FixedDraw(self._rng.random())
        due_at: dict[tuple[float, str], list[int]] = defaultdict(list)
        expired: list[LeasedEvent] = []
        for event in events:
            when = self._policy.next_attempt_at(event.attempts + 1, now, event.deadline, draw)
            if when is None:
                expired.append(event)
            else:
                due_at[(when, event.lease_id)].append(event.id)
        for (when, lease_id), ids in due_at.items():
            await self._outbox.reschedule(
                ids, next_attempt_at=when, attempt=attempt, lease_id=lease_id
            )
            self._settled(ids)
        retried = len(events) - len(expired)
        self._counts["retried"] += retried
        self._metrics.retries.labels(self.pixel_id, str(err.retry_class)).inc(retried)
        if expired:
            await self._dead_letter(expired, DeadLetterReason.EXPIRED, attempt, now)

    async def _throttled(self, events: Sequence[LeasedEvent], err: GraphError) -> None:
        await self._release(events)
        self._counts["throttles"] += 1
        self._metrics.retries.labels(self.pixel_id, str(err.retry_class)).inc(len(events))
        self._throttle_streak += 1
        self.aimd.on_throttle()
        self._metrics.send_rate_limit.labels(self.pixel_id).set(self.aimd.limit)
        # Meta's own estimate wins; without one (or with "0", while Meta still refuses),
        # pause longer on each throttle in a row.
        pause = err.retry_after
        if pause is None or pause <= 0:
            pause = self._policy.ceiling(self._throttle_streak)
        pause = min(pause, self._policy.max_delay)
        self._paused_until = max(self._paused_until, time.monotonic() + pause)
        await self._hold_everywhere(pause, "throttle", err)

    async def _trip_breaker(self, events: Sequence[LeasedEvent], err: GraphError) -> None:
        await self._release(events)
        tripped = self.breaker.trip(time.monotonic(), wall_time=self._clock())
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
        # After the state, gauge and log: they must agree the moment the breaker is open.
        await self._hold_everywhere(self.breaker.probe_interval, "breaker", err)

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

    # ------------------------------------------------------------ bisection

    async def _isolate(
        self,
        events: list[LeasedEvent],
        err: GraphError,
        token: str,
        tec: str | None,
        batch: _Batch,
        *,
        sent_together: bool,
    ) -> None:
        """Split a refused batch until each bad event stands alone (see module docstring).

        ``sent_together``: ``err`` is Meta's answer to exactly ``events``; otherwise it
        was inferred (a sibling half was accepted) and nothing was sent as this group.
        """
        if len(events) == 1:
            await self._settle_lone(events[0], err if sent_together else None, token, tec, batch)
            return
        middle = len(events) // 2
        left, right = events[:middle], events[middle:]
        left_result = await self._bisect_send(left, token, tec, batch)
        if not isinstance(left_result, GraphError):
            await self._on_success(left, batch)
            await self._isolate(right, err, token, tec, batch, sent_together=False)
            return
        if not is_event_level(left_result):
            # Meta's answer changed class mid-bisection (outage, throttle, token): the
            # unsent right half shares the left half's fate.
            await self._on_failure(left + right, left_result, token, tec, batch)
            return
        await self._isolate(left, left_result, token, tec, batch, sent_together=True)
        right_result = await self._bisect_send(right, token, tec, batch)
        if isinstance(right_result, GraphError):
            await self._on_failure(right, right_result, token, tec, batch)
        else:
            await self._on_success(right, batch)

    async def _settle_lone(
        self,
        event: LeasedEvent,
        own_error: GraphError | None,
        token: str,
        tec: str | None,
        batch: _Batch,
    ) -> None:
        """One suspect event: make sure Meta refused *it*, then dead-letter it."""
        if own_error is None:
            result = await self._bisect_send([event], token, tec, batch)
            if not isinstance(result, GraphError):
                await self._on_success([event], batch)
                return
            if not is_event_level(result):
                await self._on_failure([event], result, token, tec, batch)
                return
            own_error = result
        if (
            own_error.code == 100
            and own_error.subcode == MALFORMED_FBC_SUBCODE
            and await self._resend_without_fbc(event, own_error, token, tec, batch)
        ):
            return
        await self._dead_letter(
            [event], dead_letter_reason(own_error), attempt_from(own_error, self._clock())
        )

    async def _resend_without_fbc(
        self, event: LeasedEvent, err: GraphError, token: str, tec: str | None, batch: _Batch
    ) -> bool:
        """Meta: a malformed fbc (100/2804001) is dropped and the event sent again, once.

        True when the event is settled (delivered, rescheduled or dead-lettered).
        """
        stripped = without_fbc(event.payload)
        if stripped is None:
            return False
        result = await self._bisect_send(
            [dataclasses.replace(event, payload=stripped)], token, tec, batch
        )
        if not isinstance(result, GraphError):
            log.warning(
                "pixel %s: Meta refused an event's fbc as malformed (100/2804001); "
                "it was delivered without fbc (event_name=%s)",
                self.pixel_id,
                self._metrics.event_label(event.event_name),
                extra={"pixel": self.pixel_id, "count": 1, "result": "ok:fbc_dropped"},
            )
            await self._on_success([event], batch)
            return True
        if not is_event_level(result):
            await self._on_failure([event], result, token, tec, batch)
            return True
        attempt = dataclasses.replace(
            attempt_from(result, self._clock()),
            message=f"sent again without user_data.fbc after 100/2804001: {result.message}",
        )
        await self._dead_letter([event], dead_letter_reason(result), attempt)
        return True

    async def _bisect_send(
        self, events: Sequence[LeasedEvent], token: str, tec: str | None, batch: _Batch
    ) -> EventsResponse | GraphError:
        self._counts["bisect_requests"] += 1
        self._metrics.bisect_requests.labels(self.pixel_id).inc()
        return await self._send(events, token, tec, batch)

    # ---------------------------------------------------- outbox settlement

    def _settled(self, ids: Sequence[int]) -> None:
        for event_id in ids:
            self._leased_until.pop(event_id, None)

    async def _ack(self, events: Sequence[LeasedEvent], answer: MetaAnswer | None = None) -> None:
        now = self._clock()
        for lease_id, ids in _by_lease(events).items():
            await self._outbox.ack_delivered(ids, now=now, lease_id=lease_id, answer=answer)
            self._settled(ids)

    async def _release(self, events: Sequence[LeasedEvent]) -> None:
        for lease_id, ids in _by_lease(events).items():
            await self._outbox.release(ids, lease_id=lease_id)
            self._settled(ids)

    async def _dead_letter(
        self,
        events: Sequence[LeasedEvent],
        reason: DeadLetterReason,
        attempt: Attempt | None,
        now: float | None = None,
    ) -> None:
        at = self._clock() if now is None else now
        for lease_id, ids in _by_lease(events).items():
            await self._outbox.dead_letter(
                ids, reason=reason, attempt=attempt, now=at, lease_id=lease_id
            )
            self._settled(ids)
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
