"""Several ``capirelay serve`` processes on one PostgreSQL outbox, as a deployment runs them.

* Two replicas receiving the same webhooks at the same moment send each event once.
* Three replicas share a stream of events; one is SIGKILLed in the middle.  Every
  event any replica acknowledged reaches Meta (the emulator); an event reaches it
  twice only inside the crash window (sent by the killed replica before the kill,
  not yet acked in the outbox, so its lease expired and a survivor sent it again).
  Those re-sends are counted and reported.  ``make test`` runs the full 100,000
  events (about 16 s on a quiet 2-core machine).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_replicas import (
    ACCESS_TOKEN,
    INGEST_KEY,
    PIXEL_ID,
    dedup_keys,
    deployment_env,
    events_given_up_at_lease_end,
    leased_event_ids,
    purchase,
    queue_depth,
    replicas,
)

from capirelay.emulator.testing import RunningEmulator, run_emulator
from gateway_traffic import Traffic
from waiting import wait_for

POST_BATCH = 250
CLIENT_THREADS = 6
BATCH_SIZE_TO_META = 500
MAX_IN_FLIGHT = 4
DEADLINE_SECONDS = 75


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with run_emulator(pixels={PIXEL_ID: ACCESS_TOKEN}) as em:
        yield em


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {INGEST_KEY}"}, timeout=10)


def received_ids(emulator: RunningEmulator) -> Counter[str]:
    return Counter(e["event"]["event_id"] for e in emulator.state.events(PIXEL_ID))


# ------------------------------------------------------------------ webhook race


def test_two_replicas_racing_on_the_same_webhook_deliver_it_once(
    emulator: RunningEmulator, postgres_url: str, tmp_path: Path
) -> None:
    settings_env = deployment_env(postgres_url, emulator.url)
    hooks = [
        [purchase(f"hook-{n}-{i}", f"buyer{n}.{i}@example.com") for i in range(5)]
        for n in range(60)
    ]
    with replicas(2, settings_env, tmp_path) as pair:
        clients = [_client(r.url) for r in pair]
        barrier = threading.Barrier(2)

        def deliver_hook(client: httpx.Client, hook: list[dict[str, Any]]) -> list[Any]:
            barrier.wait()  # both replicas get the webhook at the same moment
            response = client.post("/v1/events", json={"pixel_id": PIXEL_ID, "data": hook})
            assert response.status_code == 202, response.text
            return list(response.json()["results"])

        statuses: Counter[tuple[str, str]] = Counter()
        with ThreadPoolExecutor(2) as pool:
            for hook in hooks:
                answers = pool.map(deliver_hook, clients, [hook, hook])
                for results in answers:
                    for result in results:
                        statuses[(result["event_id"], result["status"])] += 1
        for client in clients:
            client.close()
        wanted = {e["event_id"] for hook in hooks for e in hook}
        wait_for(
            lambda: wanted <= set(received_ids(emulator)),
            DEADLINE_SECONDS,
            what="every webhook arrived",
        )
        wait_for(
            lambda: queue_depth(postgres_url) == 0,
            DEADLINE_SECONDS,
            interval=0.1,
            what="the queue is empty",
        )
        stored_keys = dedup_keys(postgres_url)
    # Counted once both replicas have stopped: no request can still be on its way.
    received = received_ids(emulator)

    assert stored_keys == len(wanted)  # the replicas shared this database, not local files
    assert all(statuses[(event_id, "queued")] == 1 for event_id in wanted)
    assert all(statuses[(event_id, "duplicate")] == 1 for event_id in wanted)
    assert {event_id: received[event_id] for event_id in wanted} == dict.fromkeys(wanted, 1)
    assert emulator.state.stats()["duplicates"] == 0


# ------------------------------------------------------------- crash of a replica


def replica_batch(number: int) -> list[dict[str, Any]]:
    return [
        purchase(f"r-{number}-{i}", f"buyer{number}.{i}@example.com") for i in range(POST_BATCH)
    ]


@pytest.mark.parametrize("total", [100_000], ids=["100k"])
def test_three_replicas_one_sigkilled_lose_nothing_acknowledged(
    emulator: RunningEmulator,
    postgres_url: str,
    tmp_path: Path,
    total: int,
    record_property: Any,
) -> None:
    settings_env = deployment_env(postgres_url, emulator.url, batch_size=BATCH_SIZE_TO_META,
                                  max_in_flight=MAX_IN_FLIGHT)  # fmt: skip
    started = time.monotonic()
    with replicas(3, settings_env, tmp_path) as fleet:
        traffic = Traffic(
            [r.url for r in fleet],
            pixel_id=PIXEL_ID,
            ingest_key=INGEST_KEY,
            total=total,
            batch_size=POST_BATCH,
            make_batch=replica_batch,
            deadline_seconds=DEADLINE_SECONDS,
            retry_pause=0.02,
            client_timeout=10,
        )
        threads = [threading.Thread(target=traffic.run, daemon=True) for _ in range(CLIENT_THREADS)]
        for thread in threads:
            thread.start()
        wait_for(
            lambda: len(traffic.acked) >= total // 2,
            DEADLINE_SECONDS,
            what="half the events were acked",
        )
        victim = fleet[1]
        victim.kill()  # SIGKILL, and reaped: it acknowledges nothing more
        # What the victim may have sent without recording the ack: the rows it held.
        leased_at_kill = leased_event_ids(postgres_url)
        acked_before_kill = len(traffic.acked)
        for thread in threads:
            thread.join(DEADLINE_SECONDS)

        assert not traffic.errors
        assert traffic.statuses["rejected"] == 0
        assert len(traffic.acked) == total
        wait_for(
            lambda: emulator.state.stats()["events_accepted"] >= total,
            DEADLINE_SECONDS,
            what="Meta received them all",
        )
        # The victim's leased events come back when their lease ends; wait for the queue to
        # empty so every crash-window re-send is in before counting.
        wait_for(
            lambda: queue_depth(postgres_url) == 0,
            DEADLINE_SECONDS,
            interval=0.1,
            what="the queue is empty",
        )
        received = Counter(e["event"]["event_id"] for e in emulator.state.events(PIXEL_ID))
        survivors_exit = [r.stop() for r in fleet if r is not victim]

    elapsed = time.monotonic() - started
    sent_twice = {event_id: n for event_id, n in received.items() if n > 1}
    meta_duplicates = emulator.state.stats()["duplicates"]
    for name, value in (
        ("events", total),
        ("acked_before_kill", acked_before_kill),
        ("client_retries", traffic.retries),
        ("sent_twice_in_crash_window", len(sent_twice)),
        ("seconds", round(elapsed, 1)),
    ):
        record_property(name, value)
    print(
        f"\nreplica crash test: {total} events over 3 replicas in {elapsed:.1f} s; "
        f"{acked_before_kill} acked before SIGKILL of {victim.name}, {traffic.retries} client "
        f"retries, {len(sent_twice)} events sent twice (crash window; emulator dedup count "
        f"{meta_duplicates})"
    )
    assert traffic.acked <= set(received), "an acknowledged event never reached Meta"
    # Re-sends come from two windows only.  The crash window: rows leased when the victim
    # died, which it may have sent (Meta may even read that request after the kill) without
    # recording the ack, so their lease expired and a survivor sent them again, once.  And
    # a batch a replica gave up on because its lease was about to end (on a busy machine
    # the in-process emulator has taken seconds to read one): Meta may have read it anyway
    # and the next lease sends it again.  Each replica logs those with their count.
    given_up = sum(events_given_up_at_lease_end(replica.log_path) for replica in fleet)
    resends = sum(n - 1 for n in sent_twice.values())
    assert len(set(sent_twice) - leased_at_kill) <= given_up
    assert resends <= min(len(leased_at_kill), BATCH_SIZE_TO_META * MAX_IN_FLIGHT) + given_up
    if not given_up:
        assert all(n == 2 for n in sent_twice.values())
    assert meta_duplicates == resends
    assert all(code in (0, -15) for code in survivors_exit)
