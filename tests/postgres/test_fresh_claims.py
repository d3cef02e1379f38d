"""Enqueues sent without ON CONFLICT when their keys are new (postgres/_enqueue.py,
FreshClaims): the same answers as the arbitrating statement in every case, the
arbitrating one sent when a key exists after all, and a back-off after each conflict."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from pg_replicas import OpenReplica, hold_dedup_key, one_backend_waits_on_a_lock

from capirelay.outbox import EnqueueStatus, NewEvent
from capirelay.outbox.postgres import PostgresOutbox, _enqueue
from capirelay.outbox.postgres import outbox as pg_outbox
from capirelay.outbox.postgres._enqueue import (
    FRESH_BACKOFF_FIRST,
    FRESH_BACKOFF_MAX,
    FreshClaims,
    enqueue_params,
)
from capirelay.outbox.postgres._statements import (
    ARBITRATES,
    CHANNEL,
    FRESH,
    QUERIES,
    without_lines_marked,
)
from enqueue_model import answers_as_the_model
from waiting import wait_for

T0 = 1_800_000_000.0
QUEUED, DUPLICATE = EnqueueStatus.QUEUED, EnqueueStatus.DUPLICATE


def event(event_id: str, order: bytes | None = None) -> NewEvent:
    new = NewEvent("111", "Purchase", event_id, b"{}", int(T0), T0 + 86400)
    return new if order is None else replace(new, order_key=order.ljust(16, b".")[:16])


@pytest.fixture
def sent_fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Whether each one-statement enqueue the outbox runs is sent fresh, in order."""
    record: list[bool] = []
    original = pg_outbox.enqueue_in_one_statement

    async def recording(*args: Any, **kwargs: Any) -> set[int]:
        record.append(kwargs.get("fresh", False))
        return await original(*args, **kwargs)

    monkeypatch.setattr(pg_outbox, "enqueue_in_one_statement", recording)
    yield record


def test_the_enqueue_block_is_two_statements_the_fresh_one_without_on_conflict() -> None:
    fresh, arbitrating = QUERIES["enqueue_fresh"], QUERIES["enqueue"]
    assert "ON CONFLICT" not in fresh and "%(cutoff)s" not in fresh
    assert "ON CONFLICT" in arbitrating and "%(cutoff)s" in arbitrating
    assert FRESH not in arbitrating and ARBITRATES not in fresh
    # The same inserts in the same order; only the claims and the answer differ.
    for statement in (fresh, arbitrating):
        inserts = [line.split("(")[0] for line in statement.splitlines() if "INSERT INTO" in line]
        assert inserts == [
            "    INSERT INTO capirelay_order_ledger ",
            "    INSERT INTO capirelay_dedup AS d ",
            "    INSERT INTO capirelay_queue ",
        ]
    with pytest.raises(ValueError, match="no line marked"):
        without_lines_marked("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", ARBITRATES)


def test_fresh_claims_back_off_after_each_conflict_and_start_over() -> None:
    claims = FreshClaims()
    assert claims.fresh()
    claims.failed()
    assert [claims.fresh() for _ in range(FRESH_BACKOFF_FIRST)] == [False] * FRESH_BACKOFF_FIRST
    assert claims.fresh()  # tried again after the back-off
    claims.failed()  # a second conflict in a row: twice as long
    assert [claims.fresh() for _ in range(2 * FRESH_BACKOFF_FIRST)] == [False] * (
        2 * FRESH_BACKOFF_FIRST
    )
    assert claims.fresh()
    for _ in range(20):  # never longer than the cap
        claims.failed()
    assert sum(not claims.fresh() for _ in range(2 * FRESH_BACKOFF_MAX)) == FRESH_BACKOFF_MAX
    claims.succeeded()  # a fresh statement that went through: the first back-off again
    claims.failed()
    assert sum(not claims.fresh() for _ in range(4 * FRESH_BACKOFF_FIRST)) == FRESH_BACKOFF_FIRST
    assert claims.failures == 23


async def test_new_keys_go_fresh_and_an_existing_one_falls_back_to_the_same_answers(
    open_replica: OpenReplica, postgres_url: str, sent_fresh: list[bool]
) -> None:
    box = await open_replica(listen=False)
    assert await box.enqueue([event("a"), event("b", b"o1")], now=T0) == [QUEUED, QUEUED]
    assert sent_fresh == [True] and box._fresh_claims.failures == 0
    # b's key exists: the fresh statement fails whole, the arbitrating one answers.
    assert await box.enqueue([event("c"), event("b")], now=T0) == [QUEUED, DUPLICATE]
    assert sent_fresh == [True, True, False] and box._fresh_claims.failures == 1
    # An order already in the ledger, under a new event id: the same, and then the
    # back-off: the next statements arbitrate without trying fresh first.
    assert await box.enqueue([event("d", b"o1")], now=T0) == [DUPLICATE]
    assert sent_fresh[3:] == [False]
    assert await box.enqueue([event("e")], now=T0) == [QUEUED]
    assert sent_fresh[4:] == [False]
    with psycopg.connect(postgres_url) as conn:
        queued = sorted(r[0] for r in conn.execute("SELECT event_id FROM capirelay_queue"))
        keys = conn.execute("SELECT count(*) FROM capirelay_dedup").fetchone()
    assert queued == ["a", "b", "c", "e"]  # the failed fresh statement left nothing
    assert keys == (4,)
    assert await box.order_ledger_size() == 1


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
async def test_a_key_another_transaction_holds_is_waited_for_then_decided(
    open_replica: OpenReplica, postgres_url: str, sent_fresh: list[bool], outcome: str
) -> None:
    """A fresh insert of a key another replica is inserting waits for that transaction,
    as ON CONFLICT does: committed, the key is a duplicate (the fresh statement fails
    and the arbitrating one says so); rolled back, the fresh statement queues it."""
    box = await open_replica(listen=False)
    blocker = hold_dedup_key(postgres_url, "k", T0)
    try:
        call = asyncio.create_task(box.enqueue([event("k")], now=T0))
        waits = one_backend_waits_on_a_lock(postgres_url)
        await asyncio.to_thread(wait_for, waits, 30, what="the insert waits")
        assert not call.done()
        getattr(blocker, outcome)()
    finally:
        blocker.close()
    if outcome == "commit":
        assert await call == [DUPLICATE]
        assert sent_fresh == [True, False]
    else:
        assert await call == [QUEUED]
        assert sent_fresh == [True]


def test_always_fresh_answers_as_the_model(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no back-off every statement is tried fresh first: generated calls sharing
    event ids and orders, one after the other or at once (one group), get the statuses
    and ledger entries of the in-memory outbox (tests/enqueue_model.py)."""
    monkeypatch.setattr(_enqueue, "FRESH_BACKOFF_FIRST", 0)
    monkeypatch.setattr(_enqueue, "FRESH_BACKOFF_MAX", 0)
    loop = asyncio.new_event_loop()
    box = PostgresOutbox(postgres_url, pool_size=4, listen=False)
    loop.run_until_complete(box.open())
    try:
        answers_as_the_model(box, loop, event, max_examples=60)
        assert box._fresh_claims.failures > 0  # the fall-back ran, not only fresh statements
    finally:
        loop.run_until_complete(box.close())
        loop.close()


@pytest.mark.parametrize("mix", ["fresh against arbitrating", "all fresh"])
async def test_replicas_sending_overlapping_keys_queue_each_once(
    open_replica: OpenReplica, postgres_url: str, monkeypatch: pytest.MonkeyPatch, mix: str
) -> None:
    """Four replicas (own pools) enqueue calls sharing event ids and orders at once, some
    fresh and some arbitrating: each dedup key and each order is queued at most once,
    an event without an order exactly once, and the tables hold what the answers say."""
    monkeypatch.setattr(_enqueue, "FRESH_BACKOFF_FIRST", 0)
    monkeypatch.setattr(_enqueue, "FRESH_BACKOFF_MAX", 0)
    boxes = [await open_replica(listen=False) for _ in range(4)]
    if mix == "fresh against arbitrating":
        for box in boxes[::2]:
            monkeypatch.setattr(box._fresh_claims, "fresh", lambda: False)
    rng = random.Random(7)
    for round_number in range(20):
        run = uuid.uuid4().hex[:6]
        calls = [
            [
                event(
                    f"{run}-e{rng.randrange(25)}",
                    None if rng.random() < 0.5 else f"{run}-o{rng.randrange(15)}".encode(),
                )
                for _ in range(rng.randint(1, 6))
            ]
            for _ in range(40)
        ]
        results: list[list[EnqueueStatus]] = []
        for wave in range(0, len(calls), len(boxes)):  # one call per replica at a time
            results += await asyncio.gather(
                *(
                    box.enqueue(call, now=T0 + round_number)
                    for box, call in zip(boxes, calls[wave : wave + len(boxes)], strict=True)
                )
            )
        by_key: Counter[str] = Counter()
        by_order: Counter[bytes] = Counter()
        without_order: set[str] = set()
        for call, statuses in zip(calls, results, strict=True):
            for sent, status in zip(call, statuses, strict=True):
                if sent.order_key is None:
                    without_order.add(sent.event_id)
                if status == QUEUED:
                    by_key[sent.event_id] += 1
                    if sent.order_key is not None:
                        by_order[sent.order_key] += 1
        assert set(by_key.values()) == {1} and set(by_order.values()) <= {1}
        assert without_order <= set(by_key)
        with psycopg.connect(postgres_url) as conn:
            rows = conn.execute(
                "SELECT event_id, count(*) FROM capirelay_queue WHERE event_id LIKE %s GROUP BY 1",
                (run + "-%",),
            ).fetchall()
            keys = conn.execute(
                "SELECT count(*) FROM capirelay_dedup WHERE event_id LIKE %s", (run + "-%",)
            ).fetchone()
        assert dict(rows) == dict(by_key)
        assert keys == (len(by_key),)
    assert sum(box._fresh_claims.failures for box in boxes) > 0


@pytest.mark.parametrize("name", ["enqueue_fresh", "enqueue"])
async def test_both_statements_write_the_ledger_then_the_dedup_keys_then_the_queue(
    open_replica: OpenReplica, postgres_url: str, name: str
) -> None:
    """The same lock order in both statements (ledger, dedup keys, queue rows), so a
    fresh statement on one replica and an arbitrating one on another cannot deadlock,
    and a fresh statement that meets an existing key stops before it writes a queue row
    (PostgreSQL runs a data-modifying CTE nothing reads last: the fresh queue insert
    waits for the dedup claim's count).  Seen by triggers that report each insert."""
    await open_replica(listen=False)  # migrates the schema
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION report() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE NOTICE '%', TG_TABLE_NAME; RETURN NEW; END $$"
        )
        for table in ("capirelay_order_ledger", "capirelay_dedup", "capirelay_queue"):
            conn.execute(
                f"CREATE TRIGGER report BEFORE INSERT ON {table}"
                " FOR EACH ROW EXECUTE FUNCTION report()"
            )
        inserts: list[str] = []
        conn.add_notice_handler(lambda notice: inserts.append(str(notice.message_primary)))
        sent = [event("p1", b"order-1"), event("p2")]
        rows = conn.execute(QUERIES[name], enqueue_params(sent, T0, CHANNEL)).fetchall()
        assert (
            rows
            and inserts
            == ["capirelay_order_ledger"] + ["capirelay_dedup"] * 2 + ["capirelay_queue"] * 2
        )
        if name == "enqueue_fresh":
            inserts.clear()
            with pytest.raises(psycopg.errors.UniqueViolation):
                conn.execute(QUERIES[name], enqueue_params([event("p3"), event("p2")], T0, CHANNEL))
            assert "capirelay_queue" not in inserts  # stopped at the dedup claim
