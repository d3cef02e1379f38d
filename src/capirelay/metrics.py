"""Prometheus metrics for the gateway: one :class:`Metrics` object per app.

Each gateway instance owns its own ``CollectorRegistry`` so several apps can
live in one process (tests, the demo) without clashing on the global
registry.  Labels never carry identifiers: only pixel ids, event names,
problem codes and Meta error codes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from capirelay.meta_facts import STANDARD_EVENTS

if TYPE_CHECKING:
    from capirelay.outbox.base import LeasedEvent

__all__ = ["CONTENT_TYPE_LATEST", "AcknowledgedListener", "DeliveryListener", "Metrics", "collect"]

log = logging.getLogger("capirelay.metrics")

# (pixel_id, events Meta accepted, effective test_event_code, fbtrace_id); must not block.
DeliveryListener = Callable[[str, "Sequence[LeasedEvent]", "str | None", "str | None"], None]

# (pixel_id, events Meta accepted, its events_received); must not block.
AcknowledgedListener = Callable[[str, "Sequence[LeasedEvent]", int], None]

# Meta's standard events always get their own ``event_name`` label value.
STANDARD_EVENT_NAMES = STANDARD_EVENTS
# event_name comes from unauthenticated beacons: every new value would be a new series
# (memory, scrape size), so custom names get their own label only up to a bound.
MAX_CUSTOM_EVENT_LABELS = 50
MAX_EVENT_LABEL_CHARS = 64
# Label sets of accepted{} whose child counter is kept at hand (ingest counts every request).
_MAX_CACHED_CHILDREN = 4096
OTHER_EVENT_LABEL = "other"


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def collect(metric: Counter | Gauge | Histogram) -> list[Metric]:
    """``metric.collect()``, or under ``--workers N`` the same family summed over every
    worker (what the dashboard charts read, so they count all workers' events)."""
    directory = _multiprocess_dir()
    if directory is None:
        return list(metric.collect())
    names = {family.name for family in metric.describe()}
    collector = MultiProcessCollector(None, path=directory)
    return [family for family in collector.collect() if family.name in names]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.accepted = Counter(
            "capirelay_events_accepted_total",
            "Events durably queued for delivery.",
            ["pixel", "event_name", "source"],
            registry=r,
        )
        self.duplicates = Counter(
            "capirelay_events_duplicate_total",
            "Events answered 'duplicate' by the local 48 h dedup.",
            ["pixel", "event_name"],
            registry=r,
        )
        self.rejected = Counter(
            "capirelay_events_rejected_total",
            "Events rejected at ingest, by problem code.",
            ["pixel", "problem"],
            registry=r,
        )
        self.dropped = Counter(
            "capirelay_events_dropped_total",
            "Events deliberately not sent (bot traffic, no consent).",
            ["pixel", "reason"],
            registry=r,
        )
        self.beacon_verification = Counter(
            "capirelay_beacon_verification_total",
            "Browser beacons queued, by whether a server-signed token vouched for them.",
            ["pixel", "event_name", "result"],
            registry=r,
        )
        self.webhooks = Counter(
            "capirelay_webhooks_total",
            "Webhook deliveries by outcome (processed, ignored, ping, unauthorized).",
            ["webhook", "outcome"],
            registry=r,
        )
        self.sent = Counter(
            "capirelay_events_sent_total",
            "Events accepted by the Graph API.",
            ["pixel", "event_name"],
            registry=r,
        )
        self.requests = Counter(
            "capirelay_graph_requests_total",
            "Requests made to the Graph API, by outcome class.",
            ["pixel", "outcome"],
            registry=r,
        )
        self.meta_errors = Counter(
            "capirelay_graph_errors_total",
            "Graph API errors by code and subcode.",
            ["pixel", "code", "subcode", "retry_class"],
            registry=r,
        )
        self.retries = Counter(
            "capirelay_events_retried_total",
            "Events rescheduled after a failed attempt.",
            ["pixel", "retry_class"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "capirelay_events_dead_lettered_total",
            "Events moved to the dead-letter queue, by reason.",
            ["pixel", "reason"],
            registry=r,
        )
        self.bisect_requests = Counter(
            "capirelay_bisect_requests_total",
            "Extra Graph requests spent isolating invalid events inside rejected batches.",
            ["pixel"],
            registry=r,
        )
        self.send_latency = Histogram(
            "capirelay_graph_request_seconds",
            "Latency of Graph API requests.",
            ["pixel"],
            buckets=(0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.batch_size = Histogram(
            "capirelay_batch_events",
            "Events per Graph API request.",
            ["pixel"],
            buckets=(1, 5, 10, 50, 100, 250, 500, 750, 1000),
            registry=r,
        )
        self.queue_depth = Gauge(
            "capirelay_queue_depth",
            "Events waiting for delivery.",
            ["pixel"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.oldest_queued_age = Gauge(
            "capirelay_queue_oldest_age_seconds",
            "Age of the oldest queued event.",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.min_time_to_deadline = Gauge(
            "capirelay_queue_min_seconds_to_deadline",
            "Time left before the most urgent queued event expires (7 d / 62 d rule).",
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.dlq_size = Gauge(
            "capirelay_dlq_size",
            "Events in the dead-letter queue.",
            ["reason"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.breaker_open = Gauge(
            "capirelay_breaker_open",
            "1 while a pixel's circuit breaker is open (auth/permission errors).",
            ["pixel"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.unconfirmed = Counter(
            "capirelay_events_unconfirmed_total",
            "Events in accepted requests that Meta's events_received did not count.",
            ["pixel"],
            registry=r,
        )
        self.send_rate_limit = Gauge(
            "capirelay_pixel_concurrency_limit",
            "Current AIMD concurrency allowance per pixel (drops on throttling).",
            ["pixel"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pii_found = Counter(
            "capirelay_pii_found_total",
            "Emails, phone numbers or secrets found in URLs or custom_data at ingest, by "
            "the pixel's pii_in_urls action (removed or rejected).",
            ["pixel", "action"],
            registry=r,
        )

        # Meta's side (capirelay.ops.diagnostics): checks, reconciliation.
        self.meta_diagnostics_failing = Gauge(
            "capirelay_meta_diagnostics_failing",
            "1 while a Meta diagnostics check (or capirelay's finding) fails for the pixel.",
            ["pixel", "key"],
            registry=r,
        )
        self.meta_diagnostics_transitions = Counter(
            "capirelay_meta_diagnostics_transitions_total",
            "Checks that started (state=failing) or stopped (state=passing) failing.",
            ["pixel", "key", "state"],
            registry=r,
        )
        self.meta_diagnostics_runs = Counter(
            "capirelay_meta_diagnostics_runs_total",
            "Scheduled diagnostics runs per pixel by result (ok or the failing step).",
            ["pixel", "result"],
            registry=r,
        )
        self.meta_reconciliation_gap = Gauge(
            "capirelay_meta_reconciliation_gap_ratio",
            "Share of acknowledged server events Meta's /stats does not count (settled hours).",
            ["pixel"],
            registry=r,
        )
        self.meta_reconciliation_alert = Gauge(
            "capirelay_meta_reconciliation_alert",
            "1 while a reconciliation alert holds (kind=undercount or had_pii).",
            ["pixel", "kind"],
            registry=r,
        )

        # In-process observers of accepted batches (the dashboard's recent-events ring).
        self.delivery_listeners: list[DeliveryListener] = []
        # Observers of Meta's events_received per accepted batch (delivered-per-hour counter).
        self.acknowledged_listeners: list[AcknowledgedListener] = []
        self._custom_event_labels: set[str] = set()
        self._event_labels_lock = threading.Lock()
        self._accepted_children: dict[tuple[str, str, str], Any] = {}

    def count_accepted(self, pixel_id: str, event_name: str, source: str, n: int) -> None:
        """``accepted{pixel_id, event_name, source}`` += n, its child looked up once per
        label set (``labels()`` validates and locks on every call; ingest counts each request)."""
        key = (pixel_id, event_name, source)
        child = self._accepted_children.get(key)
        if child is None:
            child = self.accepted.labels(pixel_id, self.event_label(event_name), source)
            if len(self._accepted_children) < _MAX_CACHED_CHILDREN:
                self._accepted_children[key] = child
        child.inc(n)

    def event_label(self, event_name: str) -> str:
        """The ``event_name`` label value for ``event_name``: the name itself for Meta's
        standard events and the first custom names seen (up to
        ``MAX_CUSTOM_EVENT_LABELS``, each at most ``MAX_EVENT_LABEL_CHARS`` long),
        ``"other"`` for everything else."""
        if event_name in STANDARD_EVENT_NAMES or event_name in self._custom_event_labels:
            return event_name
        if len(event_name) > MAX_EVENT_LABEL_CHARS:
            return OTHER_EVENT_LABEL
        with self._event_labels_lock:
            if len(self._custom_event_labels) >= MAX_CUSTOM_EVENT_LABELS:
                return OTHER_EVENT_LABEL
            self._custom_event_labels.add(event_name)
        return event_name

    def delivered(
        self,
        pixel_id: str,
        events: Sequence[LeasedEvent],
        test_event_code: str | None,
        fbtrace_id: str | None,
    ) -> None:
        """Meta accepted ``events``: tell the listeners (a no-op when there are none).

        A failing listener is logged and skipped: observing a delivery must never
        turn it into a failed (and later repeated) one.
        """
        for listener in self.delivery_listeners:
            try:
                listener(pixel_id, events, test_event_code, fbtrace_id)
            except Exception:
                log.exception("delivery listener %r failed", listener)

    def acknowledged(
        self, pixel_id: str, events: Sequence[LeasedEvent], events_received: int
    ) -> None:
        """Meta's ``events_received`` for an accepted batch: tell the listeners."""
        for listener in self.acknowledged_listeners:
            try:
                listener(pixel_id, events, events_received)
            except Exception:
                log.exception("acknowledged listener %r failed", listener)

    def render(self) -> bytes:
        """The exposition text: this registry, or, under ``capirelay serve --workers N``
        (``PROMETHEUS_MULTIPROC_DIR`` set), every worker's values added up (gauges as
        their ``multiprocess_mode`` says: storage-derived ones are the most recent
        reading, a worker's breaker the max over live workers, its allowance the sum)."""
        directory = _multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=directory)
        return generate_latest(merged)
