"""Meta misbehaving: storms from the emulator's fault book, end to end through the gateway.

Each storm starts before the events arrive and ends by itself (``count`` or
``duration``).  Through every one of them the gateway must keep its three
promises, measured at the Graph API side by :class:`RecordingGraph`:

* nothing accepted is lost: every acknowledged event reaches Meta, and the
  dead-letter queue stays empty (none of these faults is the event's fault);
* backoff stays bounded: no event waits longer between two attempts than the
  configured ``backoff_max`` plus the request timeout (and slack for a
  loaded CI machine), and no event is tried more than a handful of times;
* nothing is retried past its deadline: an event whose 7-day window closes
  during a permanent outage is dead-lettered as ``expired``, and the last
  request carrying it arrives before that deadline.

Figures (attempts, longest gap, Meta-side duplicates) are printed per storm
(run with ``-s``) and gathered in docs/reliability.md.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from capirelay.config import DeliverySettings, IngestKey, PixelSettings, Secret, Settings
from capirelay.delivery.worker import PROBE_BATCH
from capirelay.emulator.faults import parse_fault
from capirelay.server import create_app
from server.conftest import serve_in_thread
from waiting import wait_for

from .harness import (
    ACCESS_TOKEN,
    INGEST_KEY,
    PIXEL_ID,
    GraphRequest,
    RecordedEmulator,
    dlq_size,
    purchase,
    queue_depth,
    recorded_emulator,
)

EVENTS = 200
PER_REQUEST = 100
BACKOFF_MAX = 1.0
REQUEST_TIMEOUT = 0.5
# A gap longer than this between two attempts would mean backoff ran away.
GAP_BOUND = BACKOFF_MAX + REQUEST_TIMEOUT + 1.5
ATTEMPT_BOUND = 25
DELIVERY_TIMEOUT = 30.0
PROBE_SECONDS = 0.3
SEVEN_DAYS = 7 * 24 * 3600


def probes_sent(meta: RecordedEmulator) -> list[GraphRequest]:
    """Refused requests of probe size: only the open breaker sends so few events at once."""
    return [r for r in meta.graph.requests if r.status != 200 and len(r.event_ids) <= PROBE_BATCH]


def assert_probed_not_hammered(meta: RecordedEmulator, queued: int) -> None:
    """After the first refusals (at most every queued event once), only probes went out,
    at most one per ``breaker_probe_seconds`` (a lower bound: load only widens the gaps)."""
    refused = [r for r in meta.graph.requests if r.status != 200]
    probes = probes_sent(meta)
    assert sum(len(r.event_ids) for r in refused) <= queued + PROBE_BATCH * len(probes)
    ordered = sorted(probes, key=lambda r: r.at)
    gaps = [b.at - a.at for a, b in itertools.pairwise(ordered)]
    assert all(gap >= PROBE_SECONDS * 0.95 for gap in gaps), gaps


def settings_for(graph_url: str, db_path: Path, api_version: str = "v26.0") -> Settings:
    return Settings(
        storage=f"sqlite:///{db_path}",
        graph_url=graph_url,
        pixels={
            PIXEL_ID: PixelSettings(
                access_token=Secret(value=ACCESS_TOKEN), api_version=api_version
            )
        },
        ingest_keys={"backend": IngestKey(key=Secret(value=INGEST_KEY))},
        delivery=DeliverySettings(
            batch_size=100,
            linger_ms=5,
            poll_seconds=0.05,
            lease_seconds=5,
            backoff_base=0.1,
            backoff_max=BACKOFF_MAX,
            request_timeout=REQUEST_TIMEOUT,
            breaker_probe_seconds=PROBE_SECONDS,
        ),
    )


@pytest.fixture
def meta() -> Iterator[RecordedEmulator]:
    with recorded_emulator() as emulator:
        yield emulator


@pytest.fixture
def gateway(meta: RecordedEmulator, tmp_path: Path) -> Iterator[str]:
    with serve_in_thread(create_app(settings_for(meta.url, tmp_path / "faults.db"))) as url:
        yield url


def send(gateway_url: str, events: list[dict[str, Any]]) -> set[str]:
    """Post ``events`` in requests of PER_REQUEST; the ids the gateway acknowledged."""
    acked: set[str] = set()
    with httpx.Client(
        base_url=gateway_url, headers={"Authorization": f"Bearer {INGEST_KEY}"}, timeout=10
    ) as client:
        for start in range(0, len(events), PER_REQUEST):
            body = {"pixel_id": PIXEL_ID, "data": events[start : start + PER_REQUEST]}
            answer = client.post("/v1/events", json=body)
            assert answer.status_code == 202, answer.text
            acked |= {r["event_id"] for r in answer.json()["results"] if r["status"] == "queued"}
    return acked


def fresh_events(n: int = EVENTS, **kwargs: Any) -> list[dict[str, Any]]:
    prefix = uuid.uuid4().hex[:8]
    return [purchase(f"{prefix}-{i}", **kwargs) for i in range(n)]


@dataclass(frozen=True)
class Figures:
    events: int
    requests: int
    max_attempts: int
    longest_gap: float
    longest_silence: float
    meta_duplicates: int
    seconds: float

    def line(self, storm: str) -> str:
        return (
            f"{storm}: {self.events} events, {self.requests} requests to Meta, "
            f"max {self.max_attempts} attempts/event, longest gap {self.longest_gap:.2f} s "
            f"(Meta silent at most {self.longest_silence:.2f} s), "
            f"{self.meta_duplicates} Meta-side duplicates, "
            f"delivered in {self.seconds:.1f} s, lost 0"
        )


def figures(meta: RecordedEmulator, ids: set[str], started: float) -> Figures:
    attempts = {event_id: meta.graph.attempts().get(event_id, []) for event_id in ids}
    gaps = [
        later.at - earlier.at
        for tries in attempts.values()
        for earlier, later in itertools.pairwise(tries)
    ]
    arrivals = sorted(request.at for request in meta.graph.requests)
    return Figures(
        events=len(ids),
        requests=len(meta.graph.requests),
        max_attempts=max(len(tries) for tries in attempts.values()),
        longest_gap=max(gaps, default=0.0),
        longest_silence=max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0),
        meta_duplicates=int(meta.state.stats()["duplicates"]),
        seconds=time.time() - started,
    )


STORMS: list[tuple[str, list[dict[str, Any]]]] = [
    ("5xx storm (503 HTML pages)", [{"kind": "http_error", "status": 503, "duration": 1.0}]),
    ("500 with Graph code 2", [{"kind": "http_error", "status": 500, "count": 12}]),
    ("mixed 502/504 at 50 %", [
        {"kind": "http_error", "status": 502, "duration": 1.2, "probability": 0.5},
        {"kind": "http_error", "status": 504, "duration": 1.2, "probability": 0.5},
    ]),
    ("slow answers past the client timeout", [
        {"kind": "latency", "latency_ms": 800, "duration": 1.0},
    ]),
    ("hang then 504", [{"kind": "timeout", "seconds": 2, "count": 4}]),
    ("throttling burst (80004, 17, 613)", [
        {"kind": "throttle", "code": 80004, "count": 3},
        {"kind": "throttle", "code": 17, "count": 2},
        {"kind": "throttle", "code": 613, "count": 2, "retry_after": 0.3},
    ]),
    ("transient Graph errors (1, 2)", [
        {"kind": "graph_error", "code": 1, "is_transient": True, "count": 5},
        {"kind": "graph_error", "code": 2, "is_transient": True, "count": 5},
    ]),
    # Errors capirelay does not know, naming no event: the pixel is held, nothing is
    # dead-lettered (these used to bisect 200 good events into the DLQ as invalid:9999).
    ("unknown Graph code 9999 for 3 s", [
        {"kind": "graph_error", "code": 9999, "status": 400, "duration": 3.0},
    ]),
    ("method deprecated (code 11) for 1 s", [
        {"kind": "graph_error", "code": 11, "status": 400, "duration": 1.0},
    ]),
]  # fmt: skip
# Storms during which the events are released (pixel paused or held), not retried: an
# event may sit out the whole storm, so only Meta's silence is bounded, not its gap.
HELD_STORMS = ("throttling", "unknown", "method deprecated")


@pytest.mark.parametrize(("storm", "faults"), STORMS, ids=[s for s, _ in STORMS])
def test_a_storm_loses_nothing_and_backoff_stays_bounded(
    meta: RecordedEmulator,
    gateway: str,
    storm: str,
    faults: list[dict[str, Any]],
    record_property: Any,
) -> None:
    for spec in faults:
        meta.state.faults.add(parse_fault(spec))
    started = time.time()
    acked = send(gateway, fresh_events())
    assert len(acked) == EVENTS

    wait_for(lambda: acked <= meta.accepted_ids(), timeout=DELIVERY_TIMEOUT)
    wait_for(lambda: queue_depth(gateway) == 0)

    result = figures(meta, acked, started)
    record_property("figures", result.line(storm))
    print("\n" + result.line(storm))
    assert dlq_size(gateway) == {}, "a storm that is not the events' fault dead-lettered events"
    assert result.requests > EVENTS // PER_REQUEST, "the storm never hit: no request was retried"
    assert result.max_attempts <= ATTEMPT_BOUND
    # While work is pending the gateway never goes quiet for longer than one capped backoff.
    assert result.longest_silence <= GAP_BOUND
    if not storm.startswith(HELD_STORMS):
        # A throttled event is released, not retried: it may sit out several pixel-wide
        # pauses in a row, each capped; only retried events are bound by the per-event gap.
        assert result.longest_gap <= GAP_BOUND


def test_revoked_token_buffers_and_a_restored_token_drains(
    meta: RecordedEmulator, gateway: str
) -> None:
    meta.state.revoke_token(ACCESS_TOKEN)
    acked = send(gateway, fresh_events())
    wait_for(lambda: len(probes_sent(meta)) >= 3, timeout=DELIVERY_TIMEOUT, what="three probes")
    probes = len(meta.graph.requests)
    assert not acked & meta.accepted_ids()
    assert queue_depth(gateway) == EVENTS
    # The breaker probes with a small batch; it does not hammer Meta with the backlog.
    assert_probed_not_hammered(meta, EVENTS)

    meta.state.restore_token(ACCESS_TOKEN)
    wait_for(lambda: acked <= meta.accepted_ids(), timeout=DELIVERY_TIMEOUT)
    wait_for(lambda: queue_depth(gateway) == 0)
    assert dlq_size(gateway) == {}
    print(f"\ntoken revoked: {probes} refused requests, then {EVENTS} events delivered, lost 0")


@pytest.mark.filterwarnings("ignore:v15.0 stopped working")  # the client's own warning
def test_an_expired_api_version_keeps_events_until_the_config_is_fixed(
    meta: RecordedEmulator, tmp_path: Path
) -> None:
    db_path = tmp_path / "version.db"
    with serve_in_thread(create_app(settings_for(meta.url, db_path, api_version="v15.0"))) as url:
        acked = send(url, fresh_events(50))
        wait_for(lambda: len(probes_sent(meta)) >= 3, timeout=DELIVERY_TIMEOUT, what="probes")
        assert not meta.accepted_ids()
        assert queue_depth(url) == 50
        assert dlq_size(url) == {}
        refused = len(meta.graph.requests)
        assert_probed_not_hammered(meta, 50)
    # The operator fixes api_version and restarts: the same outbox drains.
    with serve_in_thread(create_app(settings_for(meta.url, db_path))) as url:
        wait_for(lambda: acked <= meta.accepted_ids(), timeout=DELIVERY_TIMEOUT)
        assert dlq_size(url) == {}
    print(f"\nexpired v15.0: {refused} refused requests in 1 s, 50 events kept, then delivered")


def test_nothing_is_retried_past_its_deadline(meta: RecordedEmulator, gateway: str) -> None:
    # Events whose 7-day window closes ~7 s from now, during an outage that outlasts it.
    closes_at = time.time() + 7
    event_time = int(closes_at) - SEVEN_DAYS
    meta.state.faults.add(parse_fault({"kind": "http_error", "status": 503, "duration": 30}))
    acked = send(gateway, fresh_events(20, event_time=event_time))
    assert len(acked) == 20

    wait_for(lambda: dlq_size(gateway).get("expired") == 20, timeout=DELIVERY_TIMEOUT)
    attempts = meta.graph.attempts()
    last_try = max(request.at for event_id in acked for request in attempts[event_id])
    tries = [len(attempts[event_id]) for event_id in acked]
    print(
        f"\ndeadline: 20 events retried {min(tries)}-{max(tries)} times, last try "
        f"{int(event_time) + SEVEN_DAYS - last_try:.1f} s before the deadline, all 20 "
        "dead-lettered as expired, lost 0"
    )
    assert last_try < event_time + SEVEN_DAYS
    assert queue_depth(gateway) == 0
