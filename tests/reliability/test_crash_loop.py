"""Crash loop: SIGKILL the gateway again and again under load, restart it on the same
storage, and account for every event per cycle: accepted, delivered, sent twice.

Client threads post batches of fresh events without pause and, like any sane client,
retry a batch (same event ids) until the gateway answers 202; an answer of
``duplicate`` for a retried batch means the first try had been committed before the
kill.  Each cycle lets the gateway run for a random 0.5-2 s of that load, then
SIGKILLs it and starts it again.  At the end the load stops, the queue drains, and:

* every acknowledged event reached Meta (lost = 0);
* an event reached Meta twice only if its first receipt came before a kill (it was
  sent, but the kill struck before the outbox recorded the ack, so its lease
  expired and it went again); Meta's dedup accounting counts those re-sends.

Runs on SQLite and on PostgreSQL (a fresh schema of this run's database).  Slow:
``make soak`` runs it; ``CAPIRELAY_CRASH_CYCLES`` sets the number of cycles (default 10).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from waiting import wait_for

from .harness import (
    INGEST_KEY,
    PIXEL_ID,
    GatewayProcess,
    RecordedEmulator,
    purchase,
    queue_depth,
    recorded_emulator,
    write_config,
)

CYCLES = int(os.environ.get("CAPIRELAY_CRASH_CYCLES", "10"))
THREADS = 4
BATCH = 25
RETRY_FOR_SECONDS = 60.0

pytestmark = pytest.mark.slow


@dataclass
class Ledger:
    """What the clients were told, with the cycle each acknowledgement came in."""

    cycle: int = 0
    acked_in_cycle: dict[str, int] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    client_retries: int = 0
    unanswered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, results: list[dict[str, Any]]) -> None:
        with self.lock:
            for result in results:
                self.statuses[result["status"]] += 1
                if result["status"] in ("queued", "duplicate"):
                    self.acked_in_cycle.setdefault(result["event_id"], self.cycle)


def client_loop(url: str, ledger: Ledger, stop: threading.Event) -> None:
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {INGEST_KEY}"}, timeout=5
    ) as client:
        while not stop.is_set():
            prefix = uuid.uuid4().hex[:10]
            body = {"pixel_id": PIXEL_ID, "data": [purchase(f"{prefix}-{i}") for i in range(BATCH)]}
            post_until_answered(client, body, ledger)


def post_until_answered(client: httpx.Client, body: dict[str, Any], ledger: Ledger) -> None:
    give_up = time.monotonic() + RETRY_FOR_SECONDS
    while time.monotonic() < give_up:
        try:
            answer = client.post("/v1/events", json=body)
        except httpx.TransportError:
            answer = None
        if answer is not None and answer.status_code == 202:
            ledger.record(answer.json()["results"])
            return
        with ledger.lock:
            ledger.client_retries += 1
        time.sleep(0.05)
    with ledger.lock:
        ledger.unanswered += 1


@pytest.fixture
def meta() -> Iterator[RecordedEmulator]:
    with recorded_emulator() as emulator:
        yield emulator


@pytest.fixture
def storage(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend == "postgres":
        with request.getfixturevalue("pg_schema")() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'crash.db'}"


def test_crash_loop_loses_nothing_acknowledged(
    meta: RecordedEmulator, storage: str, backend: str, tmp_path: Path, record_property: Any
) -> None:
    config = write_config(tmp_path, storage=storage, graph_url=meta.url)
    gateway = GatewayProcess(config, tmp_path / "gateway.log", log_level="warning")
    ledger = Ledger()
    stop = threading.Event()
    rng = random.Random(20261126)
    kills: list[float] = []
    gateway.start()
    threads = [
        threading.Thread(target=client_loop, args=(gateway.url, ledger, stop), daemon=True)
        for _ in range(THREADS)
    ]
    try:
        for thread in threads:
            thread.start()
        for cycle in range(CYCLES):
            with ledger.lock:
                ledger.cycle = cycle
            time.sleep(rng.uniform(0.5, 2.0))
            gateway.kill()
            kills.append(time.time())
            gateway.start()
        with ledger.lock:
            ledger.cycle = CYCLES

        def acked_after_the_last_restart() -> bool:
            with ledger.lock:
                return CYCLES in ledger.acked_in_cycle.values()

        wait_for(acked_after_the_last_restart, timeout=60)
        stop.set()
        for thread in threads:
            thread.join(RETRY_FOR_SECONDS + 10)
        acked = set(ledger.acked_in_cycle)
        wait_for(lambda: acked <= meta.accepted_ids(), timeout=60)
        wait_for(lambda: queue_depth(gateway.url) == 0, timeout=60)
    finally:
        stop.set()
        exit_code = gateway.stop()

    received = Counter(e["event"]["event_id"] for e in meta.state.events(PIXEL_ID))
    first_receipt: dict[str, float] = {}
    for stored in meta.state.events(PIXEL_ID):
        first_receipt.setdefault(stored["event"]["event_id"], stored["received_at"])
    rows = cycle_rows(ledger, received, first_receipt, kills)
    print_table(backend, rows, ledger, exit_code)
    record_property("cycles", rows)

    assert ledger.unanswered == 0
    assert ledger.statuses["rejected"] == 0
    assert acked <= set(received), "an acknowledged event never reached Meta"
    sent_twice = {event_id for event_id, n in received.items() if n > 1}
    assert all(first_receipt[event_id] <= kills[-1] for event_id in sent_twice)
    assert meta.state.stats()["duplicates"] == sum(received[e] - 1 for e in sent_twice)


def cycle_rows(
    ledger: Ledger,
    received: Counter[str],
    first_receipt: dict[str, float],
    kills: list[float],
) -> list[dict[str, int]]:
    rows = [
        {"cycle": c + 1, "accepted": 0, "delivered": 0, "duplicated": 0} for c in range(CYCLES + 1)
    ]
    for event_id, cycle in ledger.acked_in_cycle.items():
        rows[cycle]["accepted"] += 1
        rows[cycle]["delivered"] += int(received[event_id] > 0)
    for event_id, count in received.items():
        if count > 1:
            cycle = next(
                (i for i, kill in enumerate(kills) if first_receipt[event_id] <= kill), CYCLES
            )
            rows[cycle]["duplicated"] += count - 1
    return rows


def print_table(backend: str, rows: list[dict[str, int]], ledger: Ledger, exit_code: Any) -> None:
    print(f"\ncrash loop ({backend}, {CYCLES} SIGKILLs, {THREADS} client threads):")
    print(f"{'cycle':>6} {'accepted':>9} {'delivered':>10} {'duplicated':>11} {'lost':>5}")
    for row in rows:
        label = str(row["cycle"]) if row["cycle"] <= CYCLES else "drain"
        lost = row["accepted"] - row["delivered"]
        print(
            f"{label:>6} {row['accepted']:>9} {row['delivered']:>10} "
            f"{row['duplicated']:>11} {lost:>5}"
        )
    total = {k: sum(r[k] for r in rows) for k in ("accepted", "delivered", "duplicated")}
    print(
        f"{'total':>6} {total['accepted']:>9} {total['delivered']:>10} "
        f"{total['duplicated']:>11} {total['accepted'] - total['delivered']:>5}"
    )
    print(f"client retries {ledger.client_retries}, statuses {dict(ledger.statuses)}, "
          f"final SIGTERM exit {exit_code}")  # fmt: skip
