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

How a refused batch is split (:mod:`capirelay.delivery.bisect`), how long its lease
lets it run (:mod:`capirelay.delivery.lease`) and what is logged and counted
(:mod:`capirelay.delivery.telemetry`) live in their own modules; this one decides.
Time comes from one injected :class:`capirelay.clock.Clock` (wall time for what the
outbox stores, monotonic time for pauses), so tests can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from capirelay.clock import Clock
from capirelay.config import PixelSettings, Settings, token_replace_hint
from capirelay.delivery.bisect import Bisection
from capirelay.delivery.lease import LeaseBudget, LeaseRunningOut, attempt_from, dead_letter_reason
from capirelay.delivery.status import AIMDLimit, Breaker, BreakerState, LastError, PixelStatus
from capirelay.delivery.telemetry import PixelTelemetry
from capirelay.graph import EventsResponse, GraphClient, GraphError, RetryClass
from capirelay.graph.errors import TOKEN_ERROR_CODES, is_event_level
from capirelay.metrics import Metrics
from capirelay.outbox import (
    Attempt,
    DeadLetterReason,
    LeasedEvent,
    Outbox,
    StorageUnavailable,
)
from capirelay.outbox.receipts import MetaAnswer
from capirelay.retry import FixedDraw, RetryPolicy
from capirelay.tasks import cancel_and_wait, finish_despite_cancels

log = logging.getLogger("capirelay.delivery")

PROBE_BATCH: Final = 10
#: How long a batch cancelled by shutdown may take to give its events back.
RELEASE_ON_STOP_SECONDS: Final = 5.0
ClientFactory = Callable[[PixelSettings | None], GraphClient]


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
        clock: Clock,
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
        self._telemetry = PixelTelemetry(pixel_id, metrics, clock)
        self._paused_until = 0.0  # monotonic
        self._throttle_streak = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._waiting = ""  # PixelStatus.waiting
        self._lease = LeaseBudget(
            outbox,
            clock,
            lease_seconds=self._delivery.lease_seconds,
            request_timeout=self._delivery.request_timeout,
        )
        # Shrinks when a bisection outlasts its lease, so the next one fits in it.
        self._batch_limit = self._delivery.batch_size
        self._metrics.send_rate_limit.labels(pixel_id).set(self.aimd.limit)
        self._metrics.breaker_open.labels(pixel_id).set(0)

    # ------------------------------------------------------------- lifecycle

    @property
    def pixel(self) -> PixelSettings | None:
        return self._settings.pixels.get(self.pixel_id)

    @property
    def last_error(self) -> LastError | None:
        return self._telemetry.last_error

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
            await cancel_and_wait(*pending)

    def status(self) -> PixelStatus:
        now = self._clock.monotonic()
        counts = self._telemetry.counts
        return PixelStatus(
            pixel_id=self.pixel_id,
            breaker=self.breaker.state,
            opened_at=self.breaker.opened_at,
            last_error=self.last_error,
            concurrency_limit=self.aimd.limit,
            max_concurrency=self.aimd.ceiling,
            in_flight=len(self._in_flight),
            paused_for_seconds=max(0.0, self._paused_until - now),
            sent=counts["sent"],
            requests=counts["requests"],
            failed_requests=counts["failed_requests"],
            retried=counts["retried"],
            dead_lettered=counts["dead_lettered"],
            bisect_requests=counts["bisect_requests"],
            throttles=counts["throttles"],
            waiting=self._waiting,
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
                self.breaker.trip(self._clock.monotonic(), wall_time=self._clock.time())
            return False
        if self.breaker.state is BreakerState.OPEN:
            return await self._wait_for_probe()
        pause = self._paused_until - self._clock.monotonic()
        if pause > 0:
            await self._sleep(pause)
            return False
        await self._wait_in_flight_below(self.aimd.limit)
        # The batch that freed the slot may have paused the pixel or opened the breaker.
        return not (self._held_back() or self._stopping)

    def _held_back(self) -> bool:
        return self._paused_until > self._clock.monotonic() or self.breaker.sending_blocked

    async def _wait_for_probe(self) -> bool:
        now = self._clock.monotonic()
        if self.breaker.probe_due(now):
            return True
        wait_for = (self.breaker.next_probe_at or now) - now
        await self._sleep(wait_for)
        return False

    async def _lease_and_dispatch(self) -> None:
        probing = self.breaker.state is BreakerState.OPEN
        limit = min(PROBE_BATCH, self._batch_limit) if probing else self._batch_limit
        now = self._clock.time()
        events = await self._outbox.lease(
            self.pixel_id,
            limit=limit,
            lease_seconds=self._delivery.lease_seconds,
            now=now,
        )
        if not events:
            await self._idle()
            return
        if not probing and self._held_back():
            # A batch refused while this lease was on its way paused the pixel (or opened its
            # breaker) and released its events: give them back, the pause decides when.
            return await self._release(events)
        self._lease.leased(events, now + self._delivery.lease_seconds)
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
        now = self._clock.time()
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
            timeout = min(timeout, max(0.0, next_due - self._clock.time()))
        self._waiting = "work"
        try:
            woken = await self._sleep_or_wake(timeout)
            if woken and self._delivery.linger_ms and not self._stopping:
                # Let a burst of notifications fill the batch before leasing (on the clock).
                self._waiting = "linger"
                await self._sleep(self._delivery.linger_ms / 1000)
        finally:
            self._waiting = ""

    async def _sleep_or_wake(self, seconds: float) -> bool:
        """True when woken by :meth:`notify` (or stop) before ``seconds`` passed."""
        if self._stopping:
            return True
        try:  # asyncio.timeout: 3.11's wait_for can swallow a stop's cancel (gh-86296)
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._wake.wait()
        except TimeoutError:
            return False
        finally:
            self._wake.clear()
        return True

    async def _sleep(self, seconds: float) -> None:
        # Only stop interrupts a pause/probe wait; notifications must not shorten it.
        if self._stopping:
            return
        deadline = self._clock.monotonic() + seconds
        while not self._stopping and (left := deadline - self._clock.monotonic()) > 0:
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
        now = self._clock.time()
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
            pixel = self.pixel
            secret = pixel.access_token if pixel is not None else None
            if secret is None:
                self._telemetry.unconfigured()
            else:
                self._telemetry.unconfigured(secret.describe(), self._token_replace_hint())

    def _token_replace_hint(self) -> str | None:
        pixel = self.pixel
        return None if pixel is None else token_replace_hint(self.pixel_id, pixel)

    # ---------------------------------------------------------------- a batch

    async def _deliver(self, events: list[LeasedEvent], test_event_code: str | None) -> None:
        batch = _Batch(events)
        try:
            await self._send_and_settle(batch, test_event_code)
        except asyncio.CancelledError:
            # Shutdown ran out of patience: give back whatever is still leased, even while
            # the stop keeps cancelling (a release left unfinished would hold the events
            # until their lease lapses).  Bounded: the lease lapsing is the fallback.
            await finish_despite_cancels(
                self._release(self._unsettled(batch)), timeout=RELEASE_ON_STOP_SECONDS
            )
            raise
        except StorageUnavailable as exc:
            # The lease expires and the events come back: delivery stays at-least-once.
            log.error("pixel %s: could not record a delivery outcome: %s", self.pixel_id, exc)
        except Exception:
            log.exception(
                "pixel %s: batch failed unexpectedly; its lease will expire", self.pixel_id
            )
        finally:
            self._lease.settled(e.id for e in events)

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
        except LeaseRunningOut:
            # Without a lease heartbeat, smaller batches are what lets bisection finish
            # (and make progress) inside one lease.
            self._batch_limit = max(1, len(events) // 2)
            undecided = self._unsettled(batch)
            self._telemetry.lease_ran_out(len(undecided))
            await self._release(undecided)

    def _unsettled(self, batch: _Batch) -> list[LeasedEvent]:
        return self._lease.unsettled(batch.events)

    async def _send(
        self, events: Sequence[LeasedEvent], token: str, tec: str | None, batch: _Batch
    ) -> EventsResponse | GraphError:
        budget = await self._lease.request_budget(batch.events, batch.sends)
        client = self._client_for(self.pixel)
        batch.sends += 1
        batch.sent_at = self._clock.time()
        started = time.perf_counter()
        self._telemetry.request_sent()
        try:
            async with asyncio.timeout(budget):
                response = await client.send_events(
                    self.pixel_id,
                    [e.payload for e in events],
                    access_token=token,
                    test_event_code=tec,
                )
        except GraphError as err:
            self._telemetry.request_failed(events, err, time.perf_counter() - started)
            return err
        except TimeoutError as exc:
            # Cut short so that it cannot outlive the lease: an ordinary transient failure.
            cut = GraphError.transport(
                "timeout before the lease ends", exc, url=self._settings.graph_url
            )
            self._telemetry.request_failed(events, cut, time.perf_counter() - started)
            return cut
        self._telemetry.request_ok(events, response, time.perf_counter() - started)
        batch.answer = MetaAnswer(response.fbtrace_id, response.events_received, batch.sent_at)
        self._metrics.delivered(self.pixel_id, events, tec, response.fbtrace_id)
        if tec is None:
            self._metrics.acknowledged(self.pixel_id, events, response.events_received)
        return response

    # ------------------------------------------------------------- outcomes

    async def _on_success(self, events: Sequence[LeasedEvent], batch: _Batch) -> None:
        await self._ack(events, batch.answer)
        self._telemetry.delivered(events)
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
        self._telemetry.breaker_closed()
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
            send = _BatchSend(self, token, tec, batch)
            await Bisection(send, _BatchSettlement(self, batch, token, tec)).run(events, err)
        elif err.retry_class is RetryClass.THROTTLED:
            await self._throttled(events, err)
        elif err.retry_class in (RetryClass.AUTH, RetryClass.CONFIG, RetryClass.UNKNOWN):
            await self._trip_breaker(events, err)
        else:
            await self._retry_later(events, err)

    async def _retry_later(self, events: Sequence[LeasedEvent], err: GraphError) -> None:
        now = self._clock.time()
        attempt = attempt_from(err, now)
        draw = FixedDraw(self._rng.random())
        due_at: dict[tuple[float, str], list[int]] = defaultdict(list)
        expired: list[LeasedEvent] = []
        for event in events:
            when = self._policy.next_attempt_at(event.attempts + 1, now, event.deadline, draw)
            if when is None:
                expired.append(event)
            else:
                due_at[(when, event.lease_id)].append(event.id)
        for (when, lease_id), ids in due_at.items():
            await self._lease.reschedule(ids, when, attempt, lease_id)
        self._telemetry.retried(len(events) - len(expired), err)
        if expired:
            await self._dead_letter(expired, DeadLetterReason.EXPIRED, attempt, now)

    async def _throttled(self, events: Sequence[LeasedEvent], err: GraphError) -> None:
        # Pause first, release after: released events must not be leased again at once.
        self._throttle_streak += 1
        self.aimd.on_throttle()
        self._telemetry.throttled(len(events), err, self.aimd.limit)
        # Meta's own estimate wins; without one (or with "0", while Meta still refuses),
        # pause longer on each throttle in a row.
        pause = err.retry_after
        if pause is None or pause <= 0:
            pause = self._policy.ceiling(self._throttle_streak)
        pause = min(pause, self._policy.max_delay)
        self._paused_until = max(self._paused_until, self._clock.monotonic() + pause)
        await self._release(events)
        await self._hold_everywhere(pause, "throttle", err)

    async def _trip_breaker(self, events: Sequence[LeasedEvent], err: GraphError) -> None:
        # Open first, release after: released events wait for the probe, not the next lease.
        tripped = self.breaker.trip(self._clock.monotonic(), wall_time=self._clock.time())
        if tripped:
            hint = self._token_replace_hint() if err.retry_class is RetryClass.AUTH else None
            self._telemetry.breaker_opened(err, hint, new_token=err.code in TOKEN_ERROR_CODES)
        await self._release(events)
        # After the state, gauge and log: they must agree the moment the breaker is open.
        await self._hold_everywhere(self.breaker.probe_interval, "breaker", err)

    async def _hold_everywhere(self, seconds: float, reason: str, err: GraphError) -> None:
        """Ask the other replicas sharing the outbox (if any) not to lease this pixel for
        ``seconds`` either: a revoked token is discovered once, not once per replica."""
        now = self._clock.time()
        with contextlib.suppress(StorageUnavailable):
            await self._outbox.hold_pixel(
                self.pixel_id,
                until=now + seconds,
                reason=reason,
                now=now,
                code=err.code,
                subcode=err.subcode,
            )

    # ---------------------------------------------------- outbox settlement

    async def _ack(self, events: Sequence[LeasedEvent], answer: MetaAnswer | None = None) -> None:
        await self._lease.ack(events, self._clock.time(), answer)

    async def _release(self, events: Sequence[LeasedEvent]) -> None:
        await self._lease.release(events)

    async def _dead_letter(
        self,
        events: Sequence[LeasedEvent],
        reason: DeadLetterReason,
        attempt: Attempt | None,
        now: float | None = None,
    ) -> None:
        at = self._clock.time() if now is None else now
        await self._lease.dead_letter(events, reason, attempt, at)
        self._telemetry.dead_lettered(len(events), reason, attempt)


@dataclass(frozen=True, slots=True)
class _BatchSend:
    """Bisection's ``send`` for one batch: a counted request within the batch's lease."""

    worker: PixelWorker
    token: str
    tec: str | None
    batch: _Batch

    async def __call__(self, events: Sequence[LeasedEvent]) -> EventsResponse | GraphError:
        self.worker._telemetry.bisect_request()
        return await self.worker._send(events, self.token, self.tec, self.batch)


@dataclass(frozen=True, slots=True)
class _BatchSettlement:
    """Bisection's decisions for one batch, recorded in the outbox as they are made."""

    worker: PixelWorker
    batch: _Batch
    token: str
    tec: str | None

    async def delivered(self, events: Sequence[LeasedEvent], *, fbc_dropped: bool = False) -> None:
        if fbc_dropped:
            self.worker._telemetry.fbc_dropped(events[0])
        await self.worker._on_success(events, self.batch)

    async def refused(self, events: list[LeasedEvent], err: GraphError) -> None:
        await self.worker._on_failure(events, err, self.token, self.tec, self.batch)

    async def dead_lettered(
        self, event: LeasedEvent, err: GraphError, *, fbc_dropped: bool = False
    ) -> None:
        attempt = attempt_from(err, self.worker._clock.time())
        if fbc_dropped:
            attempt = dataclasses.replace(
                attempt,
                message=f"sent again without user_data.fbc after 100/2804001: {err.message}",
            )
        await self.worker._dead_letter([event], dead_letter_reason(err), attempt)
