"""SQLiteOutbox behaviour, on a real file: queue, dedup, leases, dead letters, durability."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from outbox_data import T0, make_event

from capirelay.outbox import (
    DEDUP_WINDOW_SECONDS,
    Attempt,
    DeadLetterReason,
    DLQFilter,
    EnqueueStatus,
    RequeueResult,
    SQLiteOutbox,
    StorageUnavailable,
)
from capirelay.outbox.sqlite import (
    ATTEMPT_LOG_LIMIT,
    MIGRATIONS,
    _GroupCommitWriter,
    _WriteOp,
    migrate,
)

QUEUED, DUPLICATE = EnqueueStatus.QUEUED, EnqueueStatus.DUPLICATE


def failure(at: float = T0, **kw: object) -> Attempt:
    fields: dict[str, object] = {"status": 500, "code": 2, "message": "Service unavailable"}
    fields.update(kw)
    return Attempt(at=at, **fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------ enqueue / dedup


async def test_same_key_twice_in_one_call_queues_the_first_only(outbox: SQLiteOutbox) -> None:
    statuses = await outbox.enqueue([make_event("a"), make_event("a"), make_event("b")], now=T0)
    assert statuses == [QUEUED, DUPLICATE, QUEUED]
    assert (await outbox.stats(now=T0)).depth == 2


@pytest.mark.parametrize(
    ("pixel_id", "event_name", "offset", "expected"),
    [
        ("111", "Purchase", 60, DUPLICATE),  # same key a minute later
        ("111", "Purchase", DEDUP_WINDOW_SECONDS - 1, DUPLICATE),  # still inside 48 h
        ("111", "Purchase", DEDUP_WINDOW_SECONDS, DUPLICATE),  # window over, still queued
        ("111", "Lead", 60, QUEUED),  # other event_name
        ("222", "Purchase", 60, QUEUED),  # other pixel
    ],
)
async def test_dedup_across_calls(
    outbox: SQLiteOutbox, pixel_id: str, event_name: str, offset: float, expected: EnqueueStatus
) -> None:
    assert await outbox.enqueue([make_event("a")], now=T0) == [QUEUED]
    again = make_event("a", pixel_id=pixel_id, event_name=event_name)
    assert await outbox.enqueue([again], now=T0 + offset) == [expected]


async def test_expire_dedup_forgets_only_keys_older_than_the_window(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue([make_event("old")], now=T0)
    await outbox.enqueue([make_event("new")], now=T0 + 3600)
    delivered = await outbox.lease("111", limit=10, lease_seconds=30, now=T0 + 3600)
    await outbox.ack([e.id for e in delivered], now=T0 + 3600)
    assert await outbox.expire_dedup(now=T0 + DEDUP_WINDOW_SECONDS + 1) == 1
    later = T0 + DEDUP_WINDOW_SECONDS + 2
    assert await outbox.enqueue([make_event("old"), make_event("new")], now=later) == [
        QUEUED,
        DUPLICATE,
    ]


async def test_payload_round_trips_as_bytes(outbox: SQLiteOutbox) -> None:
    event = make_event("a", test_event_code="TEST1")
    await outbox.enqueue([event], now=T0)
    [leased] = await outbox.lease("111", limit=10, lease_seconds=30, now=T0)
    assert leased.payload == event.payload
    assert isinstance(leased.payload, bytes)
    assert (leased.event_id, leased.test_event_code, leased.attempts) == ("a", "TEST1", 0)
    assert leased.queued_at == T0


# ------------------------------------------------------------------------ leases


async def test_lease_is_earliest_deadline_first_and_per_pixel(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue(
        [
            make_event("late", deadline=T0 + 300),
            make_event("soon", deadline=T0 + 100),
            make_event("other-pixel", pixel_id="222", deadline=T0 + 1),
            make_event("middle", deadline=T0 + 200),
        ],
        now=T0,
    )
    first = await outbox.lease("111", limit=2, lease_seconds=30, now=T0)
    assert [e.event_id for e in first] == ["soon", "middle"]
    rest = await outbox.lease("111", limit=10, lease_seconds=30, now=T0)
    assert [e.event_id for e in rest] == ["late"]
    assert await outbox.lease("111", limit=10, lease_seconds=30, now=T0) == []


async def test_expired_lease_returns_the_events(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    [first] = await outbox.lease("111", limit=10, lease_seconds=30, now=T0)
    assert await outbox.lease("111", limit=10, lease_seconds=30, now=T0 + 29) == []
    [again] = await outbox.lease("111", limit=10, lease_seconds=30, now=T0 + 30)
    assert again.id == first.id


async def test_ack_removes_events(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue([make_event("a"), make_event("b")], now=T0)
    leased = await outbox.lease("111", limit=10, lease_seconds=30, now=T0)
    await outbox.ack([e.id for e in leased], now=T0)
    stats = await outbox.stats(now=T0)
    assert (stats.depth, stats.leased) == (0, 0)
    assert await outbox.lease("111", limit=10, lease_seconds=30, now=T0 + 3600) == []


async def test_reschedule_counts_the_attempt_and_delays(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    [leased] = await outbox.lease("111", limit=10, lease_seconds=30, now=T0)
    await outbox.reschedule([leased.id], next_attempt_at=T0 + 8, attempt=failure())
    assert await outbox.next_due_at("111") == T0 + 8
    assert await outbox.due_pixels(now=T0 + 7) == []
    assert await outbox.lease("111", limit=10, lease_seconds=30, now=T0 + 7) == []
    assert await outbox.due_pixels(now=T0 + 8) == ["111"]
    [again] = await outbox.lease("111", limit=10, lease_seconds=30, now=T0 + 8)
    assert again.attempts == 1


async def test_release_gives_events_back_without_an_attempt(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    [leased] = await outbox.lease("111", limit=10, lease_seconds=300, now=T0)
    await outbox.release([leased.id])
    [again] = await outbox.lease("111", limit=10, lease_seconds=300, now=T0)
    assert (again.id, again.attempts) == (leased.id, 0)


async def test_attempt_log_is_bounded(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    for n in range(ATTEMPT_LOG_LIMIT + 5):
        [leased] = await outbox.lease("111", limit=1, lease_seconds=30, now=T0 + n)
        await outbox.reschedule([leased.id], next_attempt_at=T0 + n + 1, attempt=failure(T0 + n))
    [leased] = await outbox.lease("111", limit=1, lease_seconds=30, now=T0 + 100)
    assert leased.attempts == ATTEMPT_LOG_LIMIT + 5
    await outbox.dead_letter(
        [leased.id], reason=DeadLetterReason.EXPIRED, attempt=None, now=T0 + 100
    )
    [dead] = await outbox.dlq_list()
    assert len(dead.attempts) == ATTEMPT_LOG_LIMIT
    assert dead.attempts[-1]["at"] == T0 + ATTEMPT_LOG_LIMIT + 4  # the newest are kept


# ------------------------------------------------------------------ dead letters


async def test_dead_letter_keeps_metas_error_and_forgets_the_dedup_key(
    outbox: SQLiteOutbox,
) -> None:
    await outbox.enqueue([make_event("bad")], now=T0)
    [leased] = await outbox.lease("111", limit=10, lease_seconds=30, now=T0)
    rejection = failure(status=400, code=100, subcode=2804009, fbtrace_id="AbC123")
    await outbox.dead_letter(
        [leased.id], reason=DeadLetterReason.INVALID, attempt=rejection, now=T0 + 1
    )
    [dead] = await outbox.dlq_list()
    assert (dead.reason, dead.dead_at, dead.event_id) == ("invalid", T0 + 1, "bad")
    assert dead.error == rejection.to_dict()
    assert dead.attempts == [rejection.to_dict()]
    assert await outbox.dlq_get(dead.id) == dead
    assert (await outbox.stats(now=T0)).depth == 0
    # Meta never accepted it, so a corrected resend with the same id gets through.
    assert await outbox.enqueue([make_event("bad")], now=T0 + 2) == [QUEUED]


async def _dead_letters(outbox: SQLiteOutbox) -> None:
    rows = [
        ("a", "111", "Purchase", DeadLetterReason.INVALID, T0 + 10),
        ("b", "111", "Lead", DeadLetterReason.EXPIRED, T0 + 20),
        ("c", "222", "Purchase", DeadLetterReason.INVALID, T0 + 30),
        ("d", "222", "Purchase", DeadLetterReason.CONFIG, T0 + 40),
    ]
    for event_id, pixel_id, name, reason, dead_at in rows:
        await outbox.enqueue([make_event(event_id, pixel_id=pixel_id, event_name=name)], now=T0)
        [leased] = await outbox.lease(pixel_id, limit=1, lease_seconds=30, now=T0)
        await outbox.dead_letter([leased.id], reason=reason, attempt=None, now=dead_at)


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (None, ["d", "c", "b", "a"]),
        (DLQFilter(pixel_id="111"), ["b", "a"]),
        (DLQFilter(reason="invalid"), ["c", "a"]),
        (DLQFilter(event_name="Purchase", pixel_id="222"), ["d", "c"]),
        (DLQFilter(since=T0 + 20), ["d", "c", "b"]),
        (DLQFilter(until=T0 + 20), ["a"]),
        (DLQFilter(since=T0 + 20, until=T0 + 40), ["c", "b"]),
    ],
)
async def test_dlq_filters(
    outbox: SQLiteOutbox, flt: DLQFilter | None, expected: list[str]
) -> None:
    await _dead_letters(outbox)
    assert [d.event_id for d in await outbox.dlq_list(flt)] == expected


async def test_dlq_paging(outbox: SQLiteOutbox) -> None:
    await _dead_letters(outbox)
    assert [d.event_id for d in await outbox.dlq_list(limit=2, offset=1)] == ["c", "b"]
    assert await outbox.dlq_get(9999) is None


async def test_dlq_requeue_resets_attempts_and_remembers_the_key(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue([make_event("a")], now=T0)
    [leased] = await outbox.lease("111", limit=1, lease_seconds=30, now=T0)
    await outbox.reschedule([leased.id], next_attempt_at=T0, attempt=failure())
    [leased] = await outbox.lease("111", limit=1, lease_seconds=30, now=T0)
    await outbox.dead_letter([leased.id], reason=DeadLetterReason.INVALID, attempt=None, now=T0)
    [dead] = await outbox.dlq_list()
    assert await outbox.dlq_requeue([dead.id, 12345], now=T0 + 50) == RequeueResult([dead.id])
    assert await outbox.dlq_list() == []
    [back] = await outbox.lease("111", limit=1, lease_seconds=30, now=T0 + 50)
    assert (back.event_id, back.attempts, back.queued_at) == ("a", 0, T0 + 50)
    assert await outbox.enqueue([make_event("a")], now=T0 + 60) == [DUPLICATE]


async def test_dlq_purge_by_ids_and_by_filter(outbox: SQLiteOutbox) -> None:
    await _dead_letters(outbox)
    ids = {d.event_id: d.id for d in await outbox.dlq_list()}
    assert await outbox.dlq_purge([ids["a"]]) == 1
    assert await outbox.dlq_purge(flt=DLQFilter(pixel_id="222")) == 2
    assert [d.event_id for d in await outbox.dlq_list()] == ["b"]
    assert await outbox.dlq_purge(flt=DLQFilter()) == 1
    with pytest.raises(ValueError, match="ids or a filter"):
        await outbox.dlq_purge()


# ------------------------------------------------------------------------- stats


async def test_stats_and_due_pixels(outbox: SQLiteOutbox) -> None:
    await outbox.enqueue(
        [
            make_event("a", deadline=T0 + 500),
            make_event("b", deadline=T0 + 100),
            make_event("c", pixel_id="222", deadline=T0 + 900),
        ],
        now=T0,
    )
    await outbox.enqueue([make_event("d", pixel_id="333")], now=T0 + 5)
    [leased] = await outbox.lease("333", limit=1, lease_seconds=30, now=T0 + 5)
    await outbox.dead_letter([leased.id], reason=DeadLetterReason.EXPIRED, attempt=None, now=T0)
    await outbox.lease("111", limit=1, lease_seconds=30, now=T0)
    stats = await outbox.stats(now=T0)
    assert stats.depth == 3
    assert stats.leased == 1
    assert stats.depth_by_pixel == {"111": 2, "222": 1}
    assert stats.oldest_queued_at == T0
    assert stats.earliest_deadline == T0 + 100  # the leased one still counts
    assert (stats.dlq_size, stats.dlq_by_reason) == (1, {"expired": 1})
    assert await outbox.due_pixels(now=T0) == ["111", "222"]
    assert await outbox.next_due_at() == T0


# --------------------------------------------------------------------- durability


async def test_reopen_keeps_queue_dead_letters_and_dedup(db_path: Path) -> None:
    first = SQLiteOutbox(db_path)
    await first.open()
    await first.enqueue([make_event("a"), make_event("b")], now=T0)
    [leased] = await first.lease("111", limit=1, lease_seconds=30, now=T0)
    await first.dead_letter([leased.id], reason=DeadLetterReason.INVALID, attempt=None, now=T0)
    await first.close()

    second = SQLiteOutbox(db_path)
    await second.open()
    try:
        assert [
            e.event_id for e in await second.lease("111", limit=9, lease_seconds=1, now=T0)
        ] == ["b"]
        assert [d.event_id for d in await second.dlq_list()] == ["a"]
        assert await second.enqueue([make_event("b")], now=T0 + 1) == [DUPLICATE]
    finally:
        await second.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == MIGRATIONS[-1].version
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_newer_schema_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = 999")
    box = SQLiteOutbox(db_path)
    with pytest.raises(StorageUnavailable, match="newer"):
        await box.open()


# Group commit is the SQLite writer thread's mechanism (PostgreSQL: one transaction per call).
@pytest.mark.sqlite_only
async def test_concurrent_enqueues_share_commits(outbox: SQLiteOutbox) -> None:
    calls = 200
    before = outbox.commits
    statuses = await asyncio.gather(
        *(outbox.enqueue([make_event(f"e{i}")], now=T0) for i in range(calls))
    )
    assert all(s == [QUEUED] for s in statuses)
    commits = outbox.commits - before
    assert 1 <= commits < calls
    assert (await outbox.stats(now=T0)).depth == calls


# SQLite group commit; the PostgreSQL variant is in tests/postgres/test_postgres_outbox.py.
@pytest.mark.sqlite_only
async def test_a_failing_write_does_not_fail_its_group(outbox: SQLiteOutbox) -> None:
    broken = replace(make_event("x"), payload=None)  # type: ignore[arg-type]
    results = await asyncio.gather(
        outbox.enqueue([make_event("ok1")], now=T0),
        outbox.enqueue([broken], now=T0),
        outbox.enqueue([make_event("ok2")], now=T0),
        return_exceptions=True,
    )
    assert results[0] == [QUEUED] and results[2] == [QUEUED]
    assert isinstance(results[1], sqlite3.IntegrityError)  # NOT NULL payload
    # The failed call left nothing behind, not even its dedup key.
    assert await outbox.enqueue([make_event("x")], now=T0) == [QUEUED]


async def test_disk_full_is_storage_unavailable_and_the_writer_recovers(db_path: Path) -> None:
    box = SQLiteOutbox(db_path, max_bytes=256 * 1024)
    await box.open()
    try:
        big = b"x" * 4000
        queued = 0
        with pytest.raises(StorageUnavailable, match="SQLITE_FULL"):
            for i in range(1000):
                await box.enqueue([replace(make_event(f"e{i}"), payload=big)], now=T0)
                queued += 1
        assert queued > 10
        assert await box.ping()
        # Space comes back (here: delivered events are acked away) and writes work again.
        leased = await box.lease("111", limit=queued, lease_seconds=30, now=T0)
        await box.ack([e.id for e in leased], now=T0)
        assert await box.enqueue([make_event("after")], now=T0) == [QUEUED]
    finally:
        await box.close()


async def test_closed_outbox_is_unavailable(db_path: Path) -> None:
    box = SQLiteOutbox(db_path)
    await box.open()
    await box.close()
    assert not await box.ping()
    with pytest.raises(StorageUnavailable):
        await box.enqueue([make_event("a")], now=T0)


@pytest.mark.sqlite_only
async def test_close_runs_the_writes_already_submitted(db_path: Path) -> None:
    box = SQLiteOutbox(db_path)
    await box.open()
    pending = [asyncio.ensure_future(box.enqueue([make_event(f"e{i}")], now=T0)) for i in range(50)]
    closing = asyncio.ensure_future(box.close())
    results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)
    await asyncio.wait_for(closing, 10)
    assert results == [[QUEUED]] * 50
    reopened = SQLiteOutbox(db_path)
    await reopened.open()
    try:
        assert (await reopened.stats(now=T0)).depth == 50
    finally:
        await reopened.close()


@pytest.mark.sqlite_only
async def test_a_stopping_writer_refuses_new_writes_at_once(db_path: Path) -> None:
    writer = _GroupCommitWriter(lambda: sqlite3.connect(db_path, isolation_level=None), 8)
    writer.start()
    writer.ready.result(timeout=10)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[object] = loop.create_future()
    writer.submit(_WriteOp(lambda conn: "ran", loop, done))
    writer.stop()
    late: asyncio.Future[object] = loop.create_future()
    with pytest.raises(StorageUnavailable, match="closing"):
        writer.submit(_WriteOp(lambda conn: "never", loop, late))
    assert await asyncio.wait_for(done, 10) == "ran"  # submitted before the stop: it ran
    await loop.run_in_executor(None, writer.join, 10)
    assert not writer.is_alive()


@pytest.mark.sqlite_only
async def test_version_1_files_upgrade_with_their_queued_keys_pinned(db_path: Path) -> None:
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        migrate(conn, MIGRATIONS[:1])
        conn.execute(
            "INSERT INTO queue (pixel_id, event_name, event_id, payload, event_time, deadline,"
            " source, queued_at, available_at) VALUES ('111', 'Purchase', 'old', x'7b7d', 1, ?,"
            " 'api', ?, ?)",
            (T0 + 9e5, T0, T0),
        )
        conn.execute("INSERT INTO dedup VALUES ('111', 'Purchase', 'old', ?)", (T0,))
    box = SQLiteOutbox(db_path)
    await box.open()
    try:
        later = T0 + DEDUP_WINDOW_SECONDS + 1
        assert await box.expire_dedup(now=later) == 0
        assert await box.enqueue([make_event("old")], now=later) == [DUPLICATE]
        [leased] = await box.lease("111", limit=10, lease_seconds=30, now=later)
        await box.ack([leased.id], now=later, lease_id=leased.lease_id)
        assert (await box.stats(now=later)).depth == 0
        assert await box.expire_dedup(now=later) == 1
    finally:
        await box.close()
