"""What one pixel's deliveries tell the operator: metrics, logs and counts of settled batches.

The pixel worker decides; this records.  Logs carry the pixel, counts, Meta's
code/subcode and ``fbtrace_id``, never a token or a payload.  The counts feed
:class:`capirelay.delivery.status.PixelStatus` (dashboard, ``/status``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from capirelay.clock import Clock
from capirelay.config import after_token_fix
from capirelay.delivery.status import LastError
from capirelay.graph import EventsResponse, GraphError
from capirelay.graph.errors import meta_says
from capirelay.metrics import Metrics
from capirelay.outbox import Attempt, DeadLetterReason, LeasedEvent
from capirelay.wording import counted

log = logging.getLogger("capirelay.delivery")


def _what_to_check(err: GraphError) -> str:
    """What to look at when Graph never answered (a refused connection, a timeout)."""
    where = "that address" if err.address else "Graph"
    return (
        "check graph_url in the config (is it the Graph API, emulator or proxy you meant?) "
        f"and the network, firewall or proxy (HTTPS_PROXY) between the gateway and {where}"
    )


class PixelTelemetry:
    """Metrics, logs and counts of one pixel's requests and settled events."""

    def __init__(self, pixel_id: str, metrics: Metrics, clock: Clock) -> None:
        self.pixel_id = pixel_id
        self._metrics = metrics
        self._clock = clock
        self.counts: Counter[str] = Counter()
        self.last_error: LastError | None = None

    def request_sent(self) -> None:
        self.counts["requests"] += 1

    def bisect_request(self) -> None:
        self.counts["bisect_requests"] += 1
        self._metrics.bisect_requests.labels(self.pixel_id).inc()

    def request_ok(
        self, events: Sequence[LeasedEvent], response: EventsResponse, latency: float
    ) -> None:
        pixel = self.pixel_id
        self._metrics.requests.labels(pixel, "ok").inc()
        self._metrics.send_latency.labels(pixel).observe(latency)
        self._metrics.batch_size.labels(pixel).observe(len(events))
        log.info(
            "pixel %s: %s delivered in %.0f ms (fbtrace_id=%s)",
            pixel,
            counted(len(events), "event"),
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

    def request_failed(
        self, events: Sequence[LeasedEvent], err: GraphError, latency: float
    ) -> None:
        pixel = self.pixel_id
        self.counts["failed_requests"] += 1
        self._metrics.requests.labels(pixel, str(err.retry_class)).inc()
        self._metrics.send_latency.labels(pixel).observe(latency)
        self._metrics.batch_size.labels(pixel).observe(len(events))
        self._metrics.meta_errors.labels(
            pixel, str(err.code), str(err.subcode), str(err.retry_class)
        ).inc()
        self.last_error = LastError(
            at=self._clock.time(),
            status=err.status,
            code=err.code,
            subcode=err.subcode,
            message=err.meta_says,
            fbtrace_id=err.fbtrace_id,
            retry_class=str(err.retry_class),
        )
        if err.type == "transport":  # Graph never answered: nothing was refused
            outcome, detail = "not delivered", f"no answer: {err.meta_says}; {_what_to_check(err)}"
        else:
            outcome, detail = "refused", str(err)
        log.warning(
            "pixel %s: %s %s in %.0f ms: %s",
            pixel,
            counted(len(events), "event"),
            outcome,
            latency * 1000,
            detail,
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

    def delivered(self, events: Sequence[LeasedEvent]) -> None:
        self.counts["sent"] += len(events)
        for name, count in Counter(e.event_name for e in events).items():
            self._metrics.sent.labels(self.pixel_id, self._metrics.event_label(name)).inc(count)

    def fbc_dropped(self, event: LeasedEvent) -> None:
        log.warning(
            "pixel %s: Meta refused an event's fbc as malformed (100/2804001); "
            "it was delivered without fbc (event_name=%s)",
            self.pixel_id,
            self._metrics.event_label(event.event_name),
            extra={"pixel": self.pixel_id, "count": 1, "result": "ok:fbc_dropped"},
        )

    def retried(self, count: int, err: GraphError) -> None:
        self.counts["retried"] += count
        self._metrics.retries.labels(self.pixel_id, str(err.retry_class)).inc(count)

    def throttled(self, count: int, err: GraphError, limit: int) -> None:
        self.counts["throttles"] += 1
        self._metrics.retries.labels(self.pixel_id, str(err.retry_class)).inc(count)
        self._metrics.send_rate_limit.labels(self.pixel_id).set(limit)

    def dead_lettered(self, count: int, reason: DeadLetterReason, attempt: Attempt | None) -> None:
        self.counts["dead_lettered"] += count
        self._metrics.dead_lettered.labels(self.pixel_id, str(reason)).inc(count)
        log.warning(
            "pixel %s: %d events dead-lettered (%s, code=%s subcode=%s fbtrace_id=%s)%s",
            self.pixel_id,
            count,
            reason,
            attempt.code if attempt else None,
            attempt.subcode if attempt else None,
            attempt.fbtrace_id if attempt else None,
            f": {said}"
            if attempt
            and (said := meta_says(attempt.message, attempt.user_title, attempt.user_msg))
            else "",
            extra={"pixel": self.pixel_id, "count": count, "result": f"dlq:{reason}"},
        )

    def unconfigured(self, source: str | None = None, replace_hint: str | None = None) -> None:
        """No token: none configured, or ``source`` (where it should come from, as
        :meth:`capirelay.config.Secret.describe` says: never the value) has none;
        ``replace_hint`` how to give it one (:meth:`capirelay.config.Secret.how_to_replace`)."""
        where = f"{source} is unset or empty" if source else "none configured"
        log.error(
            "pixel %s: no access token (%s); events stay queued until one is set: %s",
            self.pixel_id,
            where,
            replace_hint or f"set pixels.{self.pixel_id}.access_token",
            extra={"pixel": self.pixel_id, "breaker": "unconfigured"},
        )
        self._metrics.breaker_open.labels(self.pixel_id).set(1)

    def breaker_opened(
        self, err: GraphError, replace_hint: str | None = None, *, new_token: bool = True
    ) -> None:
        """``replace_hint``: where a new token goes (an auth error), see
        :meth:`capirelay.config.Secret.how_to_replace`; ``new_token`` False when the fix
        is a grant (3, 10, 200-299) and the token may stay as it is."""
        self._metrics.breaker_open.labels(self.pixel_id).set(1)
        log.error(
            "pixel %s: circuit breaker OPEN, delivery paused and events kept queued "
            "(code=%s subcode=%s fbtrace_id=%s): %s%s",
            self.pixel_id,
            err.code,
            err.subcode,
            err.fbtrace_id,
            err.explanation,
            f" {after_token_fix(replace_hint, new_token=new_token)}" if replace_hint else "",
            extra={
                "pixel": self.pixel_id,
                "breaker": "open",
                "code": err.code,
                "subcode": err.subcode,
                "fbtrace_id": err.fbtrace_id,
            },
        )

    def breaker_closed(self) -> None:
        self._metrics.breaker_open.labels(self.pixel_id).set(0)
        log.warning(
            "pixel %s: circuit breaker closed, the token works again; delivery resumes",
            self.pixel_id,
            extra={"pixel": self.pixel_id, "breaker": "closed"},
        )

    def lease_ran_out(self, undecided: int) -> None:
        log.warning(
            "pixel %s: lease nearly over, %d undecided events given back for another try",
            self.pixel_id,
            undecided,
            extra={"pixel": self.pixel_id, "count": undecided, "result": "released"},
        )
