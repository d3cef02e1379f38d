"""Receipts in the outbox, on both backends: written with the ack or dead-letter move they
record, hash-only, found by event id and order id, pruned by retention and cap, erased."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import orjson
from outbox_data import T0, WEEK
from typer.testing import CliRunner

from capirelay.cli import app as cli_app
from capirelay.cli.erase import erasure_hashes
from capirelay.normalize import sha256_hex
from capirelay.ops.trace import story
from capirelay.outbox import Attempt, DeadLetterReason, NewEvent, Outbox, SQLiteOutbox
from capirelay.outbox.base import unverified_claim
from capirelay.outbox.receipts import MetaAnswer, Outcome, Receipt, duplicate_receipt
from capirelay.outbox.sqlite import MIGRATIONS, migrate

LEASE = 30.0
EMAIL_HASH = hashlib.sha256(b"jane@example.com").hexdigest()
OTHER_HASH = hashlib.sha256(b"someone@example.com").hexdigest()


def event(event_id: str, *, em: str = EMAIL_HASH, order_id: str | None = None) -> NewEvent:
    payload = {
        "event_name": "Purchase",
        "event_id": event_id,
        "event_time": int(T0),
        "user_data": {"em": [em]},
        "custom_data": {"order_id": order_id} if order_id else {},
    }
    return NewEvent(
        "111", "Purchase", event_id, orjson.dumps(payload), int(T0), T0 + WEEK, source="backend"
    )


async def lease_all(outbox: Outbox, now: float = T0) -> tuple[list[int], str]:
    """The ids leased, and the lease id they carry."""
    leased = await outbox.lease("111", limit=100, lease_seconds=LEASE, now=now)
    return [e.id for e in leased], leased[0].lease_id if leased else ""


async def test_a_delivery_after_a_failure_keeps_both_answers(outbox: Outbox) -> None:
    await outbox.enqueue([event("e1", order_id="A-1001")], now=T0)
    ids, lease = await lease_all(outbox)
    failure = Attempt(at=T0 + 1, status=500, code=2, message="unavailable", fbtrace_id="Ffail")
    await outbox.reschedule(ids, next_attempt_at=T0 + 10, attempt=failure, lease_id=lease)
    ids, lease = await lease_all(outbox, T0 + 10)
    answer = MetaAnswer(fbtrace_id="Fok", events_received=1, sent_at=T0 + 11)
    await outbox.ack_delivered(ids, now=T0 + 12, answer=answer, lease_id=lease)

    record = await outbox.trace("e1")
    [receipt] = record.receipts
    assert record.delivered and not record.pending
    assert receipt.outcome == Outcome.DELIVERED and receipt.source == "backend"
    assert (receipt.received_at, receipt.first_attempt_at, receipt.last_attempt_at) == (
        T0,
        T0 + 1,
        T0 + 11,
    )
    assert receipt.attempts == 2 and receipt.fbtrace_id == "Fok" and receipt.events_received == 1
    assert [a["fbtrace_id"] for a in receipt.attempt_log] == ["Ffail"]
    assert receipt.identity == f"em:{EMAIL_HASH[:16]}"
    assert await outbox.event_ids_for_order("A-1001") == ["e1"]
    assert await outbox.event_ids_for_order("A-1002") == []
    # Delivered means gone from the queue, and its dedup key still answers duplicate.
    assert await lease_all(outbox, T0 + 100) == ([], "")
    assert [str(s) for s in await outbox.enqueue([event("e1")], now=T0 + 20)] == ["duplicate"]


async def test_an_unverified_beacon_event_is_traced_by_the_id_its_page_sent(
    outbox: Outbox,
) -> None:
    # Its rows carry the unverified namespace's prefix (capirelay.orders); trace is asked
    # for the id the page sent, queued and then dead-lettered.
    await outbox.enqueue([unverified_claim(event("u1"))], now=T0)
    [pending] = (await outbox.trace("u1")).pending
    assert (pending.where, pending.event_id) == ("queue", "u1")
    ids, lease = await lease_all(outbox)
    refusal = Attempt(at=T0 + 2, status=400, code=100, message="bad", fbtrace_id="Fu")
    await outbox.dead_letter(
        ids, reason=DeadLetterReason.INVALID, attempt=refusal, now=T0 + 3, lease_id=lease
    )
    record = await outbox.trace("u1")
    assert [(p.where, p.event_id) for p in record.pending] == [("dead_letters", "u1")]
    assert [r.event_id for r in record.receipts] == ["u1"]


async def test_a_lease_taken_over_writes_no_receipt(outbox: Outbox) -> None:
    await outbox.enqueue([event("e2")], now=T0)
    [first] = await outbox.lease("111", limit=10, lease_seconds=LEASE, now=T0)
    await outbox.lease("111", limit=10, lease_seconds=LEASE, now=T0 + LEASE + 1)

    await outbox.ack_delivered([first.id], now=T0 + 40, lease_id=first.lease_id)

    assert (await outbox.trace("e2")).receipts == []
    assert [p.where for p in (await outbox.trace("e2")).pending] == ["queue"]


async def test_dead_letters_are_receipted_with_the_refusal(outbox: Outbox) -> None:
    await outbox.enqueue([event("e3")], now=T0)
    ids, lease = await lease_all(outbox)
    refusal = Attempt(
        at=T0 + 2, status=400, code=100, subcode=2804050, message="bad", fbtrace_id="Fbad"
    )
    await outbox.dead_letter(
        ids, reason=DeadLetterReason.INVALID, attempt=refusal, now=T0 + 3, lease_id=lease
    )

    record = await outbox.trace("e3")
    [receipt] = record.receipts
    assert receipt.outcome == Outcome.DEAD_LETTERED and receipt.reason == "invalid"
    assert receipt.problems == [{"code": 100, "subcode": 2804050, "message": "bad"}]
    assert receipt.attempts == 1 and receipt.fbtrace_id == "Fbad"
    assert [p.where for p in record.pending] == ["dead_letters"]
    assert (await outbox.trace("e3", pixel_id="222")).known is False


async def test_a_replayed_dead_letter_tells_each_attempt_once(outbox: Outbox) -> None:
    # A replayed letter keeps its attempt log, so its second receipt repeated the first
    # attempt: the story told "attempt 1" twice, "dead-lettered after 1 attempts" where
    # the DLQ said 2, and "queued from backend" for the replay (a newcomer's find).
    await outbox.enqueue([event("e9")], now=T0)
    for n, at in enumerate((T0 + 2, T0 + 20), start=1):
        ids, lease = await lease_all(outbox, at - 1)
        refusal = Attempt(at=at, status=400, code=100, subcode=2804050, fbtrace_id=f"F{n}")
        await outbox.dead_letter(
            ids, reason=DeadLetterReason.INVALID, attempt=refusal, now=at + 1, lease_id=lease
        )
        if n == 1:
            [letter] = await outbox.dlq_list()
            assert (await outbox.dlq_requeue([letter.id], now=T0 + 10)).requeued == [letter.id]

    told = [(step.what, step.detail) for step in story(await outbox.trace("e9"))]
    assert told == [
        ("received", "queued from backend"),
        ("attempt", "attempt 1 refused: HTTP 400, code 100/2804050"),
        ("dead_lettered", "dead-lettered (invalid) after 1 attempt"),
        ("received", "replayed from the dead-letter queue"),
        ("attempt", "attempt 2 refused: HTTP 400, code 100/2804050"),
        ("dead_lettered", "dead-lettered (invalid) after 2 attempts (1 since its replay)"),
        ("in_dlq", "still in the dead-letter queue; `capirelay dlq` can replay it"),
    ]


async def test_a_replay_is_numbered_on_when_the_attempt_log_was_capped(outbox: Outbox) -> None:
    # Logs keep their last 20 attempts: 15 failures, a replay, 10 more and a delivery told
    # attempts 11 to 15 twice and "accepted on attempt 21" for the 26th (a reviewer's find).
    await outbox.enqueue([event("e7")], now=T0)
    at = T0
    for n in range(1, 26):
        ids, lease = await lease_all(outbox, at + 1)
        at += 10
        refusal = Attempt(at=at, status=500, code=2, fbtrace_id=f"F{n}")
        if n == 15:
            await outbox.dead_letter(
                ids, reason=DeadLetterReason.INVALID, attempt=refusal, now=at, lease_id=lease
            )
            [letter] = await outbox.dlq_list()
            await outbox.dlq_requeue([letter.id], now=at)
        else:
            await outbox.reschedule(ids, next_attempt_at=at, attempt=refusal, lease_id=lease)
    ids, lease = await lease_all(outbox, at + 1)
    answer = MetaAnswer(fbtrace_id="Fok", events_received=1, sent_at=at + 2)
    await outbox.ack_delivered(ids, now=at + 3, answer=answer, lease_id=lease)

    steps = story(await outbox.trace("e7"))
    numbers = [int(s.detail.split()[1]) for s in steps if s.what == "attempt"]
    assert numbers == list(range(1, 26))
    assert [s.detail for s in steps if s.what == "received"] == [
        "queued from backend",
        "replayed from the dead-letter queue",
    ]
    assert [s.detail for s in steps if s.what == "delivered"] == [
        "accepted by Meta on attempt 26, events_received=1"
    ]


async def test_a_corrected_resend_is_told_as_a_send_of_its_own(outbox: Outbox) -> None:
    # The dead letter's id is freed: the same id sent again is a new event with a log of
    # its own, not a replay (a reviewer's find in the first version of the above).
    await outbox.enqueue([event("e8")], now=T0)
    ids, lease = await lease_all(outbox, T0 + 1)
    refusal = Attempt(at=T0 + 2, status=400, code=100, subcode=2804050, fbtrace_id="F1")
    await outbox.dead_letter(
        ids, reason=DeadLetterReason.INVALID, attempt=refusal, now=T0 + 3, lease_id=lease
    )
    assert [str(s) for s in await outbox.enqueue([event("e8")], now=T0 + 10)] == ["queued"]
    ids, lease = await lease_all(outbox, T0 + 11)
    answer = MetaAnswer(fbtrace_id="Fok", events_received=1, sent_at=T0 + 12)
    await outbox.ack_delivered(ids, now=T0 + 13, answer=answer, lease_id=lease)

    told = [(step.what, step.detail) for step in story(await outbox.trace("e8"))]
    assert told == [
        ("received", "queued from backend"),
        ("attempt", "attempt 1 refused: HTTP 400, code 100/2804050"),
        ("dead_lettered", "dead-lettered (invalid) after 1 attempt"),
        ("in_dlq", "still in the dead-letter queue; `capirelay dlq` can replay it"),
        ("received", "queued from backend"),
        ("delivered", "accepted by Meta on attempt 1, events_received=1"),
    ]


async def test_duplicates_bump_one_receipt(outbox: Outbox) -> None:
    new = event("e4")
    receipts = [
        duplicate_receipt(
            pixel_id="111",
            event_name="Purchase",
            event_id="e4",
            source="api",
            payload=new.payload,
            test_event_code=None,
            now=T0 + n,
        )
        for n in range(3)
    ]
    await outbox.record_receipts(receipts[:1])
    await outbox.record_receipts(receipts[1:])

    [receipt] = (await outbox.trace("e4")).receipts
    assert receipt.count == 3 and receipt.last_attempt_at == T0 + 2


def receipt(event_id: str, at: float) -> Receipt:
    return Receipt("111", "Purchase", event_id, Outcome.DROPPED, "collect", at, at, reason="bot")


async def test_pruning_keeps_the_retention_and_the_cap(outbox: Outbox) -> None:
    await outbox.record_receipts([receipt(f"old{i}", T0 - 40 * 86400) for i in range(5)])
    await outbox.record_receipts([receipt(f"new{i}", T0 + i) for i in range(12)])

    removed = await outbox.prune_receipts(
        now=T0 + 20, retention_seconds=30 * 86400, cap=10, chunk=3
    )

    assert removed == 7
    assert not (await outbox.trace("old0")).known
    assert not (await outbox.trace("new1")).known  # beyond the cap: the oldest go
    assert (await outbox.trace("new2")).known and (await outbox.trace("new11")).known


async def test_erase_removes_every_trace_of_one_person(outbox: Outbox) -> None:
    await outbox.enqueue(
        [event("q1"), event("q2", em=OTHER_HASH), event("d1"), event("r1")], now=T0
    )
    taken = await outbox.lease("111", limit=10, lease_seconds=LEASE, now=T0)
    leased, lease = {e.event_id: e.id for e in taken}, taken[0].lease_id
    await outbox.dead_letter(
        [leased["d1"]], reason=DeadLetterReason.EXPIRED, attempt=None, now=T0 + 1, lease_id=lease
    )
    await outbox.ack_delivered(
        [leased["r1"]], now=T0 + 1, answer=MetaAnswer("F", 1), lease_id=lease
    )
    await outbox.release([leased["q1"], leased["q2"]], lease_id=lease)

    result = await outbox.erase(
        {"em": {EMAIL_HASH}}, pixel_id=None, now=T0 + 5, audit=[("em", EMAIL_HASH)]
    )

    # q1 queued; d1 in the DLQ plus its receipt; r1's receipt.
    assert (result.queued, result.dead_letters, result.receipts) == (1, 1, 2)
    assert not (await outbox.trace("q1")).known
    assert not (await outbox.trace("d1")).known and not (await outbox.trace("r1")).known
    assert [p.where for p in (await outbox.trace("q2")).pending] == ["queue"]
    audit = await outbox.erasure_log()
    assert audit[0]["value_sha256"] == EMAIL_HASH and audit[0]["queued"] == 1
    again = await outbox.erase({"em": {EMAIL_HASH}}, pixel_id=None, now=T0 + 6, audit=[])
    assert again.total == 0


async def test_erase_finds_values_the_param_builder_hashed(outbox: Outbox) -> None:
    # Stored as the builder made them ("<digest>.<appendix>"), they were found by the
    # byte search and then not confirmed: queued and dead-lettered rows stayed.
    builder = EMAIL_HASH + ".AQQCAQMC"
    await outbox.enqueue([event("bq", em=builder), event("bd", em=builder)], now=T0)
    taken = await outbox.lease("111", limit=10, lease_seconds=LEASE, now=T0)
    leased, lease = {e.event_id: e.id for e in taken}, taken[0].lease_id
    await outbox.dead_letter(
        [leased["bd"]], reason=DeadLetterReason.EXPIRED, attempt=None, now=T0 + 1, lease_id=lease
    )
    await outbox.release([leased["bq"]], lease_id=lease)

    wanted = erasure_hashes(["Jane@Example.com"], [], [], {None})
    result = await outbox.erase(wanted, pixel_id=None, now=T0 + 5, audit=[])
    assert (result.queued, result.dead_letters, result.receipts) == (1, 1, 1)
    assert not (await outbox.trace("bq")).known and not (await outbox.trace("bd")).known
    # Given as the builder's value itself, the same digest is looked for (and what
    # releases before hashed such a value again, for their stored rows).
    given = erasure_hashes([], [], [EMAIL_HASH.upper() + ".AQQCAQMC"], {None})["external_id"]
    assert EMAIL_HASH in given and all(len(h) == 64 for h in given)


def test_the_erasure_audit_holds_digests_only(tmp_path: Path) -> None:
    # The search holds a 32-hex external_id as an earlier release stored it, the very id
    # being erased; the audit, which outlives the erasure, wrote it (a reviewer's find).
    uuid_hex = "3f2504e04f8941d39a0c0305e82c3301"
    config = tmp_path / "capirelay.toml"
    config.write_text(f'storage = "sqlite:///{tmp_path / "x.db"}"\n', encoding="utf-8")

    async def gateway_database() -> None:  # erase works on the gateway's, never creates one
        outbox = SQLiteOutbox(tmp_path / "x.db")
        await outbox.open()
        await outbox.close()

    asyncio.run(gateway_database())
    result = CliRunner().invoke(
        cli_app, ["erase", "--external-id", uuid_hex, "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert uuid_hex[:12] not in result.output
    with sqlite3.connect(tmp_path / "x.db") as conn:
        stored = [row[0] for row in conn.execute("SELECT value_sha256 FROM erasures")]
    assert stored == [sha256_hex(uuid_hex)]


def test_erasure_also_looks_for_what_earlier_releases_stored() -> None:
    # external_id kept its inner spaces and passed 32 hex digits through; a phone that
    # carried its calling code got it twice under its region's hint.
    uuid_hex = "3f2504e04f8941d39a0c0305e82c3301"
    ids = erasure_hashes([], [], ["User 123", uuid_hex], {None})["external_id"]
    assert {sha256_hex("user123"), sha256_hex("user 123"), uuid_hex} <= ids
    assert sha256_hex(uuid_hex) in ids
    phones = erasure_hashes([], ["4915123456789"], [], {"DE"})["ph"]
    assert {sha256_hex("4915123456789"), sha256_hex("494915123456789")} == phones


async def test_receipts_of_one_acked_batch_are_found_pruned_and_erased_one_by_one(
    outbox: Outbox,
) -> None:
    # On PostgreSQL one ack's receipts share one row (migration 0009): each must still
    # behave as its own receipt.
    await outbox.enqueue(
        [event("b1", order_id="O-1"), event("b2", em=OTHER_HASH, order_id="O-2"), event("b3")],
        now=T0,
    )
    ids, lease = await lease_all(outbox)
    await outbox.ack_delivered(ids, now=T0 + 1, answer=MetaAnswer("Fb", 3), lease_id=lease)

    [b2] = (await outbox.trace("b2")).receipts
    assert (b2.event_id, b2.outcome, b2.fbtrace_id, b2.events_received) == (
        "b2",
        "delivered",
        "Fb",
        3,
    )
    assert b2.identity == f"em:{OTHER_HASH[:16]}"
    assert await outbox.event_ids_for_order("O-2") == ["b2"]
    assert await outbox.receipt_count() == 3

    result = await outbox.erase({"em": {EMAIL_HASH}}, pixel_id=None, now=T0 + 2, audit=[])

    assert result.receipts == 2
    assert not (await outbox.trace("b1")).known and not (await outbox.trace("b3")).known
    assert [r.fbtrace_id for r in (await outbox.trace("b2")).receipts] == ["Fb"]
    assert await outbox.event_ids_for_order("O-2") == ["b2"]
    assert await outbox.receipt_count() == 1
    assert await outbox.prune_receipts(now=T0 + 3, retention_seconds=WEEK, cap=0) == 1
    assert await outbox.receipt_count() == 0


async def test_a_rejection_received_before_0007_is_told_from_its_codes(db_path: Path) -> None:
    """SQLite migration 0007: a webhook rejection's receipt written before kept its codes
    only in its ``reason`` sentence; after the upgrade it carries them as ``problems``."""
    reason = "rejected (event_too_old, missing_field): event_time is more than 7 days old; fix"
    with sqlite3.connect(db_path) as conn:
        migrate(conn, [m for m in MIGRATIONS if m.version <= 6])
        conn.executemany(
            "INSERT INTO receipts (pixel_id, event_name, event_id, outcome, source, recorded_at,"
            " received_at, reason) VALUES ('111', ?, ?, 'dropped', ?, ?, ?, ?)",
            [
                ("Purchase", "old-rejected", "webhook:shop", T0, T0, reason),
                ("Lead", "old-bot", "collect", T0, T0, "bot"),
                # Not capirelay's grammar (upper case, a quote): left as it is, as 0016 does.
                ("Lead", "odd-1", "webhook:shop", T0, T0, "REJECTED (missing_field): x"),
                ("Lead", "odd-2", "webhook:shop", T0, T0, 'rejected (a"b): x'),
            ],
        )
    conn.close()
    box = SQLiteOutbox(db_path)
    await box.open()  # migrates to the latest version
    try:
        record = await box.trace("old-rejected")
        [bot] = (await box.trace("old-bot")).receipts
        odd = [(await box.trace(e)).receipts[0] for e in ("odd-1", "odd-2")]
    finally:
        await box.close()
    [rejected] = record.receipts
    assert rejected.reason == reason  # the sentence stays as it was
    assert rejected.problem_codes == ("event_too_old", "missing_field")
    assert rejected.problems[0]["message"] == "event_time is more than 7 days old; fix"
    assert [(r.problems, r.rejected_at_ingest) for r in odd] == [([], False)] * 2
    [step] = story(record)
    assert step.what == "rejected" and "(event_too_old, missing_field)" in step.detail
    assert (bot.problems, bot.rejected_at_ingest) == ([], False)
