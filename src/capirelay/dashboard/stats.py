"""The numbers behind the dashboard pages: activity over time, recent deliveries, and views.

Where the history comes from, and why in memory
-----------------------------------------------
Per-event-name history (received, deduplicated, sent, ... per minute) is kept
by :class:`ActivityRecorder`, which *samples the gateway's Prometheus
counters* (:class:`capirelay.metrics.Metrics`) every few seconds and on every
page view, and files the increase since the previous sample under the current
minute.  The ingest and delivery paths therefore pay nothing extra (they
already count), no table is written on the hot path, and the outbox schema
stays as it is for every backend.  The price, stated plainly: the history is
**per process** and starts when the process starts (3 hours are kept), like
the counters it is read from; with several gateway replicas each dashboard
shows its own replica.  Queue depth and the dead-letter queue, which are
shared state, are always read from the outbox itself.

:class:`DeliveryLog` is a bounded ring of recently accepted events, fed by the
delivery engine through ``Metrics.delivery_listeners``.  It backs the Test
events view, the end-to-end latency (queued to accepted by Meta), and the
sample of wire events the match-quality prediction runs on.  It holds wire
events only (identifiers already SHA-256 hashed), never raw PII.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from prometheus_client import Counter, Histogram

from capirelay.meta_facts import MAX_EVENT_AGE_SECONDS
from capirelay.metrics import Metrics, collect
from capirelay.orders import public_event_id
from capirelay.outbox.base import DLQGroup, LeasedEvent, QueueGroup

__all__ = [
    "OUTCOMES",
    "ActivityRecorder",
    "DeliveredEvent",
    "DeliveryLog",
    "EventNameRow",
    "LatencySummary",
    "PixelRow",
    "histogram_summary",
    "overview_rows",
    "percentile",
]

BUCKET_SECONDS: Final = 60
KEPT_BUCKETS: Final = 180
SAMPLE_INTERVAL_SECONDS: Final = 5.0
DEADLINE_WINDOW_SECONDS: Final = MAX_EVENT_AGE_SECONDS

# outcome -> (Metrics attribute, label holding the event name or None, label holding the detail)
OUTCOMES: Final[dict[str, tuple[str, str | None, str | None]]] = {
    "received": ("accepted", "event_name", None),
    "duplicate": ("duplicates", "event_name", None),
    "sent": ("sent", "event_name", None),
    "rejected": ("rejected", None, "problem"),
    "dropped": ("dropped", None, "reason"),
    "dead_lettered": ("dead_lettered", None, "reason"),
    "graph_errors": ("meta_errors", None, "code"),
}

# (outcome, pixel, event_name or "", detail or "")
SeriesKey = tuple[str, str, str, str]


def _counter_values(counter: Counter) -> Iterable[tuple[dict[str, str], float]]:
    for family in collect(counter):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                yield sample.labels, sample.value


class ActivityRecorder:
    """Per-minute increases of the gateway's counters, for the last :data:`KEPT_BUCKETS` minutes.

    See the module docstring for why this samples counters instead of writing rows.
    """

    def __init__(
        self,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        bucket_seconds: int = BUCKET_SECONDS,
        kept_buckets: int = KEPT_BUCKETS,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._bucket_seconds = bucket_seconds
        self._kept = kept_buckets
        self._last: dict[SeriesKey, float] = {}
        self._totals: dict[SeriesKey, float] = {}
        self._buckets: dict[int, dict[SeriesKey, float]] = {}
        self.started_at = clock()

    @property
    def bucket_seconds(self) -> int:
        return self._bucket_seconds

    def sample(self) -> None:
        """Read the counters now and file what grew since the last sample under this minute."""
        now = self._clock()
        bucket = int(now // self._bucket_seconds)
        current = self._read_counters()
        for key, value in current.items():
            # A counter can only go down if the process restarted its registry.
            delta = value - self._last.get(key, 0.0)
            if delta > 0:
                slot = self._buckets.setdefault(bucket, defaultdict(float))
                slot[key] += delta
        self._last = current
        self._totals = current
        oldest = bucket - self._kept
        for stale in [b for b in self._buckets if b <= oldest]:
            del self._buckets[stale]

    def totals(self) -> dict[SeriesKey, float]:
        """Counter values at the last sample (since the process started)."""
        return dict(self._totals)

    def series(
        self,
        outcome: str,
        *,
        minutes: int = 60,
        pixel_id: str | None = None,
        event_name: str | None = None,
    ) -> list[tuple[float, float]]:
        """``(bucket start, count)`` for each of the last ``minutes`` buckets, oldest first."""
        now_bucket = int(self._clock() // self._bucket_seconds)
        points: list[tuple[float, float]] = []
        for bucket in range(now_bucket - minutes + 1, now_bucket + 1):
            slot = self._buckets.get(bucket, {})
            total = sum(
                value
                for (out, pixel, name, _detail), value in slot.items()
                if out == outcome
                and (pixel_id is None or pixel == pixel_id)
                and (event_name is None or name == event_name)
            )
            points.append((bucket * self._bucket_seconds, total))
        return points

    def window_totals(self, minutes: int = 60) -> dict[SeriesKey, float]:
        """Sum of each series over the last ``minutes`` buckets."""
        now_bucket = int(self._clock() // self._bucket_seconds)
        out: dict[SeriesKey, float] = defaultdict(float)
        for bucket, slot in self._buckets.items():
            if bucket > now_bucket - minutes:
                for key, value in slot.items():
                    out[key] += value
        return dict(out)

    def _read_counters(self) -> dict[SeriesKey, float]:
        values: dict[SeriesKey, float] = defaultdict(float)
        for outcome, (attribute, name_label, detail_label) in OUTCOMES.items():
            counter: Counter = getattr(self._metrics, attribute)
            for labels, value in _counter_values(counter):
                name = labels.get(name_label, "") if name_label else ""
                detail = labels.get(detail_label, "") if detail_label else ""
                if outcome == "graph_errors":
                    # code/subcode/class: the class the delivery gave the answer (its
                    # explanation depends on the HTTP status, which the metric has not).
                    detail = (
                        f"{detail}/{labels.get('subcode', 'None')}/{labels.get('retry_class', '')}"
                    )
                values[(outcome, labels.get("pixel", ""), name, detail)] += value
        return dict(values)


@dataclass(frozen=True, slots=True)
class DeliveredEvent:
    """One event Meta accepted, as the delivery engine reported it."""

    delivered_at: float
    pixel_id: str
    event_name: str
    event_id: str
    test_event_code: str | None
    fbtrace_id: str | None
    queued_at: float
    attempts: int
    payload: bytes  # the wire event (hashed identifiers)

    @property
    def latency(self) -> float:
        """Seconds from durable acceptance at ingest to acceptance by Meta."""
        return max(0.0, self.delivered_at - self.queued_at)

    def wire(self) -> dict[str, Any]:
        decoded = orjson.loads(self.payload)
        return decoded if isinstance(decoded, dict) else {}

    def keys_sent(self) -> list[str]:
        """The ``user_data`` keys the event carried (names only, never values)."""
        user_data = self.wire().get("user_data")
        return sorted(user_data) if isinstance(user_data, dict) else []


class DeliveryLog:
    """Bounded rings of recently delivered events; a :data:`capirelay.metrics.DeliveryListener`.

    ``recent`` holds the last ``capacity`` deliveries of every kind (the quality
    sample and latencies); ``test_events`` the last ``test_capacity`` events sent
    with a test event code, in their own ring so production traffic cannot push
    them out while someone watches Events Manager's Test Events tab.
    """

    def __init__(
        self,
        *,
        capacity: int = 2000,
        test_capacity: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.recent: deque[DeliveredEvent] = deque(maxlen=capacity)
        self.test_events: deque[DeliveredEvent] = deque(maxlen=test_capacity)
        self._clock = clock

    def __call__(
        self,
        pixel_id: str,
        events: Sequence[LeasedEvent],
        test_event_code: str | None,
        fbtrace_id: str | None,
    ) -> None:
        now = self._clock()
        for event in events:
            delivered = DeliveredEvent(
                delivered_at=now,
                pixel_id=pixel_id,
                event_name=event.event_name,
                event_id=public_event_id(event.event_id),  # an unverified beacon's too
                test_event_code=test_event_code,
                fbtrace_id=fbtrace_id,
                queued_at=event.queued_at,
                attempts=event.attempts,
                payload=event.payload,
            )
            self.recent.append(delivered)
            if test_event_code:
                self.test_events.append(delivered)

    def latencies(self, pixel_id: str | None = None) -> list[float]:
        return [e.latency for e in self.recent if pixel_id is None or e.pixel_id == pixel_id]


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile (``share`` in 0..1); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    mean: float | None
    p50: float | None
    p95: float | None


def histogram_summary(histogram: Histogram, pixel_id: str) -> LatencySummary:
    """Count, mean and bucket-interpolated p50/p95 of one pixel's Graph request latency."""
    buckets: list[tuple[float, float]] = []
    count = total = 0.0
    for family in collect(histogram):
        for sample in family.samples:
            if sample.labels.get("pixel") != pixel_id:
                continue
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    if not count:
        return LatencySummary(0, None, None, None)
    buckets.sort()
    return LatencySummary(
        int(count),
        total / count,
        _bucket_quantile(buckets, count, 0.5),
        _bucket_quantile(buckets, count, 0.95),
    )


def _bucket_quantile(buckets: list[tuple[float, float]], count: float, share: float) -> float:
    """Linear interpolation inside the bucket holding the quantile (as Prometheus does)."""
    target = share * count
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= target:
            if math.isinf(bound):
                return lower_bound
            width = cumulative - lower_count
            fraction = (target - lower_count) / width if width else 1.0
            return lower_bound + (bound - lower_bound) * fraction
        lower_bound, lower_count = bound, cumulative
    return lower_bound


@dataclass(slots=True)
class EventNameRow:
    """One line of the overview: one pixel's event name."""

    event_name: str
    received: int = 0
    duplicates: int = 0
    sent: int = 0
    received_last_hour: int = 0
    sent_last_hour: int = 0
    in_dlq: int = 0
    queued: int = 0
    oldest_queued_at: float | None = None
    earliest_deadline: float | None = None


@dataclass(slots=True)
class PixelRow:
    """A pixel's block on the overview: its event names and the counts without an event name."""

    pixel_id: str
    events: list[EventNameRow] = field(default_factory=list)
    rejected_by_problem: dict[str, int] = field(default_factory=dict)
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    dead_lettered_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def totals(self) -> EventNameRow:
        row = EventNameRow("all events")
        for event in self.events:
            row.received += event.received
            row.duplicates += event.duplicates
            row.sent += event.sent
            row.received_last_hour += event.received_last_hour
            row.sent_last_hour += event.sent_last_hour
            row.in_dlq += event.in_dlq
            row.queued += event.queued
            row.oldest_queued_at = _min(row.oldest_queued_at, event.oldest_queued_at)
            row.earliest_deadline = _min(row.earliest_deadline, event.earliest_deadline)
        return row


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def overview_rows(
    pixels: Iterable[str],
    totals: dict[SeriesKey, float],
    last_hour: dict[SeriesKey, float],
    queue: Sequence[QueueGroup],
    dlq: Sequence[DLQGroup],
) -> list[PixelRow]:
    """Merge counters (since start and last hour), queue and DLQ into one row per event name."""
    rows: dict[str, PixelRow] = {pixel: PixelRow(pixel) for pixel in pixels}
    names: dict[tuple[str, str], EventNameRow] = {}

    def event_row(pixel_id: str, event_name: str) -> EventNameRow:
        pixel = rows.setdefault(pixel_id, PixelRow(pixel_id))
        row = names.get((pixel_id, event_name))
        if row is None:
            row = names[(pixel_id, event_name)] = EventNameRow(event_name)
            pixel.events.append(row)
        return row

    for (outcome, pixel_id, name, detail), value in totals.items():
        count = int(value)
        if outcome in ("received", "duplicate", "sent"):
            row = event_row(pixel_id, name)
            if outcome == "received":
                row.received += count
            elif outcome == "duplicate":
                row.duplicates += count
            else:
                row.sent += count
        elif outcome in ("rejected", "dropped", "dead_lettered") and count:
            pixel = rows.setdefault(pixel_id, PixelRow(pixel_id))
            target = {
                "rejected": pixel.rejected_by_problem,
                "dropped": pixel.dropped_by_reason,
                "dead_lettered": pixel.dead_lettered_by_reason,
            }[outcome]
            target[detail] = target.get(detail, 0) + count
    for (outcome, pixel_id, name, _detail), value in last_hour.items():
        if outcome == "received":
            event_row(pixel_id, name).received_last_hour += int(value)
        elif outcome == "sent":
            event_row(pixel_id, name).sent_last_hour += int(value)
    for group in queue:
        row = event_row(group.pixel_id, group.event_name)
        row.queued += group.depth
        row.oldest_queued_at = _min(row.oldest_queued_at, group.oldest_queued_at)
        row.earliest_deadline = _min(row.earliest_deadline, group.earliest_deadline)
    for letter_group in dlq:
        event_row(letter_group.pixel_id, letter_group.event_name).in_dlq += letter_group.count
    for pixel in rows.values():
        pixel.events.sort(key=lambda r: (-(r.received + r.queued + r.in_dlq), r.event_name))
    return [rows[p] for p in sorted(rows)]
