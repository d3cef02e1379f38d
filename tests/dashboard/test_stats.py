"""Rolling activity from the gateway's counters, the delivered-events ring, the overview merge."""

from __future__ import annotations

import orjson
import pytest

from capirelay.dashboard.stats import (
    ActivityRecorder,
    DeliveryLog,
    histogram_summary,
    overview_rows,
    percentile,
)
from capirelay.metrics import Metrics
from capirelay.orders import UNVERIFIED_ID_PREFIX
from capirelay.outbox import LeasedEvent
from capirelay.outbox.base import DLQGroup, QueueGroup

T0 = 1_790_000_040.0  # 40 s into a minute


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _leased(event_id: str, name: str = "Purchase", queued_at: float = T0 - 2) -> LeasedEvent:
    payload = orjson.dumps({"event_name": name, "user_data": {"em": ["a" * 64], "fbp": "x"}})
    return LeasedEvent(1, "111", name, event_id, payload, int(T0), T0 + 9e5, 0, None, queued_at)


def test_recorder_files_counter_growth_under_the_minute_it_happened() -> None:
    metrics, clock = Metrics(), Clock(T0)
    recorder = ActivityRecorder(metrics, clock=clock)
    metrics.accepted.labels("111", "Purchase", "api").inc(3)
    metrics.accepted.labels("111", "Purchase", "browser").inc(2)
    recorder.sample()
    clock.now += 60
    metrics.sent.labels("111", "Purchase").inc(4)
    metrics.accepted.labels("111", "Purchase", "api").inc(1)
    recorder.sample()
    received = recorder.series("received", minutes=3)
    assert [count for _, count in received] == [0, 5, 1]
    assert received[-1][0] == (T0 + 60) // 60 * 60
    assert [c for _, c in recorder.series("sent", minutes=2, pixel_id="111")] == [0, 4]
    assert [c for _, c in recorder.series("sent", minutes=2, pixel_id="222")] == [0, 0]
    assert recorder.totals()[("received", "111", "Purchase", "")] == 6
    assert recorder.window_totals(1) == {
        ("received", "111", "Purchase", ""): 1,
        ("sent", "111", "Purchase", ""): 4,
    }


@pytest.mark.parametrize(
    ("bump", "key"),
    [
        (lambda m: m.duplicates.labels("1", "Lead").inc(), ("duplicate", "1", "Lead", "")),
        (lambda m: m.rejected.labels("1", "no_fbc").inc(), ("rejected", "1", "", "no_fbc")),
        (lambda m: m.dropped.labels("1", "bot").inc(), ("dropped", "1", "", "bot")),
        (lambda m: m.dead_lettered.labels("1", "config").inc(),
         ("dead_lettered", "1", "", "config")),
        (lambda m: m.meta_errors.labels("1", "100", "2804050", "invalid").inc(),
         ("graph_errors", "1", "", "100/2804050/invalid")),
    ],
    ids=["duplicate", "rejected", "dropped", "dead_lettered", "graph_errors"],
)  # fmt: skip
def test_recorder_reads_every_outcome(bump, key) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    recorder = ActivityRecorder(metrics, clock=Clock(T0))
    bump(metrics)
    recorder.sample()
    assert recorder.totals() == {key: 1.0}


def test_recorder_forgets_buckets_past_its_window() -> None:
    metrics, clock = Metrics(), Clock(T0)
    recorder = ActivityRecorder(metrics, clock=clock, kept_buckets=2)
    metrics.sent.labels("1", "Lead").inc()
    recorder.sample()
    clock.now += 5 * 60
    recorder.sample()
    assert recorder.window_totals(60) == {}
    assert recorder.totals() == {("sent", "1", "Lead", ""): 1.0}


def test_delivery_log_keeps_test_events_in_their_own_ring() -> None:
    log = DeliveryLog(capacity=3, test_capacity=2, clock=Clock(T0))
    log("111", [_leased("a"), _leased("b")], "TEST1", "trace-1")
    log("111", [_leased(f"n{i}") for i in range(5)], None, "trace-2")
    assert [e.event_id for e in log.recent] == ["n2", "n3", "n4"]
    assert [e.event_id for e in log.test_events] == ["a", "b"]
    first = log.test_events[0]
    assert (first.test_event_code, first.fbtrace_id, first.latency) == ("TEST1", "trace-1", 2.0)
    assert first.keys_sent() == ["em", "fbp"]
    assert log.latencies("111") == [2.0, 2.0, 2.0]
    assert log.latencies("222") == []


def test_delivery_log_shows_an_unverified_beacons_event_by_the_id_its_page_sent() -> None:
    log = DeliveryLog(clock=Clock(T0))
    log("111", [_leased(UNVERIFIED_ID_PREFIX + "page-1")], "TEST1", "trace-1")
    assert [e.event_id for e in log.test_events] == ["page-1"]


def test_delivery_log_is_fed_by_metrics_listeners() -> None:
    metrics = Metrics()
    log = DeliveryLog(clock=Clock(T0))
    metrics.delivery_listeners.append(log)
    metrics.delivered("111", [_leased("z")], None, "t")
    assert [e.event_id for e in log.recent] == ["z"]


@pytest.mark.parametrize(
    ("values", "share", "expected"),
    [([], 0.5, None), ([3.0], 0.95, 3.0), ([1, 2, 3, 4], 0.5, 2), ([1, 2, 3, 4], 0.95, 4),
     ([5, 1, 4, 2, 3], 0.5, 3)],
)  # fmt: skip
def test_percentile(values: list[float], share: float, expected: float | None) -> None:
    assert percentile(values, share) == expected


def test_histogram_summary_interpolates_inside_buckets() -> None:
    metrics = Metrics()
    for latency in (0.01, 0.02, 0.03, 0.04, 0.3, 0.4):
        metrics.send_latency.labels("111").observe(latency)
    summary = histogram_summary(metrics.send_latency, "111")
    assert summary.count == 6
    assert summary.mean == pytest.approx(0.8 / 6)
    # The 3rd of 6 values lies halfway through the (0.025, 0.05] bucket (2 of its 2 values).
    assert summary.p50 == pytest.approx(0.0375)
    assert 0.3 < (summary.p95 or 0) <= 0.5
    assert histogram_summary(metrics.send_latency, "222").count == 0


def test_overview_rows_merge_counters_queue_and_dead_letters() -> None:
    totals = {
        ("received", "111", "Purchase", ""): 10.0,
        ("duplicate", "111", "Purchase", ""): 2.0,
        ("sent", "111", "Purchase", ""): 7.0,
        ("received", "111", "Lead", ""): 1.0,
        ("rejected", "111", "", "missing_field"): 3.0,
        ("dead_lettered", "111", "", "invalid"): 1.0,
    }
    last_hour = {("received", "111", "Purchase", ""): 4.0, ("sent", "111", "Purchase", ""): 3.0}
    queue = [
        QueueGroup("111", "Purchase", 2, T0 - 50, T0 + 100),
        QueueGroup("333", "Lead", 1, T0, T0 + 9),
    ]
    dlq = [DLQGroup("111", "Purchase", "invalid", 100, 1, 1, T0, None, None)]
    rows = overview_rows(["111", "222"], totals, last_hour, queue, dlq)
    assert [r.pixel_id for r in rows] == ["111", "222", "333"]
    purchase = rows[0].events[0]
    assert (purchase.event_name, purchase.received, purchase.duplicates, purchase.sent) == (
        "Purchase",
        10,
        2,
        7,
    )
    assert (purchase.received_last_hour, purchase.sent_last_hour) == (4, 3)
    assert (purchase.queued, purchase.in_dlq, purchase.oldest_queued_at) == (2, 1, T0 - 50)
    assert rows[0].rejected_by_problem == {"missing_field": 3}
    assert rows[0].dead_lettered_by_reason == {"invalid": 1}
    total = rows[0].totals
    assert (total.received, total.queued, total.earliest_deadline) == (11, 2, T0 + 100)
    assert rows[1].events == []
    assert rows[2].events[0].queued == 1


def test_a_failing_listener_does_not_fail_the_delivery() -> None:
    metrics = Metrics()
    log = DeliveryLog(clock=Clock(T0))

    def broken(*_: object) -> None:
        raise RuntimeError("listener bug")

    metrics.delivery_listeners.extend([broken, log])
    metrics.delivered("111", [_leased("y")], None, None)
    assert [e.event_id for e in log.recent] == ["y"]
