"""Lease spans (migration 0013): a lease records the deadline span of the rows it took, and
the next lease of the pixel checks rows against the held ids only inside the active
leases' spans.

What must hold: no row held by a live lease is leased again, however the spans overlap
or tie; a lease written without a span (before 0013, or by a replica still running the
version before it) still holds its rows; a row given back inside other leases' span is
never starved (it goes first once its deadline is close, and as soon as nothing else is
ready); and a lease with rows to spare outside the span never reads a held row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pg_replicas import OpenReplica

from capirelay.outbox import LeasedEvent, NewEvent
from capirelay.outbox.postgres import PostgresOutbox
from capirelay.outbox.postgres._statements import QUERIES
from capirelay.outbox.postgres.migrate import MIGRATIONS, migrate
from capirelay.outbox.postgres.outbox import LEASE_URGENT_SECONDS

T0 = 1_800_000_000.0
LEASE = 30.0
DAY = 86400.0


def event(event_id: str, deadline: float) -> NewEvent:
    return NewEvent("111", "Purchase", event_id, b"{}", int(T0), deadline)


async def _queue(open_replica: OpenReplica, count: int, *, tied: bool = False) -> PostgresOutbox:
    """A replica with ``count`` events queued, deadlines one second apart from a day on
    (``tied``: all a day on)."""
    box = await open_replica(listen=False)
    await box.enqueue([event(f"e{i}", T0 + DAY + (0 if tied else i)) for i in range(count)], now=T0)
    return box


async def _lease(box: PostgresOutbox, limit: int) -> list[LeasedEvent]:
    return await box.lease("111", limit=limit, lease_seconds=LEASE, now=T0)


def _spans(url: str) -> dict[str, tuple[float | None, float | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT lease_id, first_deadline, last_deadline FROM capirelay_leases"
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def test_each_lease_records_the_span_of_what_it_took(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    box = await _queue(open_replica, 10)
    first = await _lease(box, 4)
    second = await _lease(box, 4)
    assert [e.event_id for e in first] == ["e0", "e1", "e2", "e3"]
    assert [e.event_id for e in second] == ["e4", "e5", "e6", "e7"]
    assert _spans(postgres_url) == {
        first[0].lease_id: (T0 + DAY, T0 + DAY + 3),
        second[0].lease_id: (T0 + DAY + 4, T0 + DAY + 7),
    }


async def test_tied_deadlines_across_spans_are_never_leased_twice(
    open_replica: OpenReplica,
) -> None:
    # Every deadline is one of three values: each lease's span starts and ends on values
    # that other leases' rows share, so only the held-id check tells them apart.
    a, b = await open_replica(listen=False), await open_replica(listen=False)
    await a.enqueue([event(f"e{i}", T0 + DAY + i % 3) for i in range(90)], now=T0)
    held: list[int] = []
    for n in range(12):
        box = a if n % 2 else b
        held += [e.id for e in await _lease(box, 7)]
    assert len(held) == 84 and len(set(held)) == 84
    rest = await a.lease("111", limit=50, lease_seconds=LEASE, now=T0)
    assert len(rest) == 6 and not {e.id for e in rest} & set(held)
    assert await b.lease("111", limit=50, lease_seconds=LEASE, now=T0) == []


async def test_a_lease_without_a_span_still_holds_its_rows(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    box = await _queue(open_replica, 6)
    old = await _lease(box, 3)
    with psycopg.connect(postgres_url) as conn:  # as a replica before 0013 writes it
        conn.execute("UPDATE capirelay_leases SET first_deadline = NULL, last_deadline = NULL")
    rest = await _lease(box, 10)
    assert sorted(e.event_id for e in rest) == ["e3", "e4", "e5"]
    assert not {e.id for e in rest} & {e.id for e in old}
    assert await _lease(box, 10) == []


async def test_a_row_given_back_inside_other_leases_span_waits_but_is_never_starved(
    open_replica: OpenReplica,
) -> None:
    box = await _queue(open_replica, 10)
    first = await _lease(box, 3)  # e0 e1 e2
    await _lease(box, 3)  # e3 e4 e5
    e1 = first[1]
    await box.release([e1.id], lease_id=e1.lease_id)  # e0 and e2 stay held around it
    # e1 is not due within the hour: the rows above every span go first.
    later = await _lease(box, 2)
    assert [e.event_id for e in later] == ["e6", "e7"]
    # Nothing left above the spans: e1 comes next, before nothing else.
    rest = await _lease(box, 10)
    assert [e.event_id for e in rest] == ["e1", "e8", "e9"]


async def test_a_row_given_back_inside_other_leases_span_goes_first_near_its_deadline(
    open_replica: OpenReplica,
) -> None:
    box = await open_replica(listen=False)
    soon = T0 + LEASE_URGENT_SECONDS - 60
    await box.enqueue(
        [event("a", soon - 1), event("b", soon), event("c", soon + 1)]
        + [event(f"z{i}", T0 + DAY + i) for i in range(3)],
        now=T0,
    )
    held = await _lease(box, 3)  # a b c
    b = held[1]
    await box.release([b.id], lease_id=b.lease_id)
    [again] = await _lease(box, 1)
    assert again.event_id == "b"  # inside the span of a and c, but due within the hour


def _ready_scans(url: str, statement: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan nodes of ``statement`` that read the ready index (EXPLAIN ANALYZE, with the
    buffers each touched), rolled back."""
    with psycopg.connect(url) as conn:
        conn.execute("SET enable_bitmapscan = off")
        conn.execute("SET enable_seqscan = off")
        row = conn.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {QUERIES[statement]}", params
        ).fetchone()
        conn.rollback()
    assert row is not None
    return [
        node
        for node in _nodes(row[0][0]["Plan"])
        if node.get("Index Name") == "capirelay_queue_ready"
    ]


def _pages(scans: list[dict[str, Any]]) -> int:
    return sum(int(n["Shared Hit Blocks"]) + int(n["Shared Read Blocks"]) for n in scans)


@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "tied"])
async def test_a_lease_with_rows_to_spare_above_the_span_reads_no_held_row(
    open_replica: OpenReplica, postgres_url: str, tied: bool
) -> None:
    # Tied: every event of the backlog has the same deadline, as every event of one
    # second has (0014: the spans are bounded by (deadline, id)).
    box = await _queue(open_replica, 3000, tied=tied)
    for _ in range(3):
        await _lease(box, 500)  # 1,500 held
    params = {
        "pixel_id": "111",
        "now": T0,
        "limit": 50,
        "lease_until": T0 + LEASE,
        "urgent_before": T0 + LEASE_URGENT_SECONDS,
        "owner": None,
        "lease_id": "explained",
    }
    scans = [s for s in _ready_scans(postgres_url, "lease", params) if "Actual Rows" in s]
    assert len(scans) == 5  # the parts: below (two scans), inside & urgent, above, inside
    read = [int(node["Actual Rows"]) * int(node["Actual Loops"]) for node in scans]
    # Below the span: nothing; inside it, due within the hour: nothing; above it: the
    # 50 taken; inside it, the rest: never reached.
    assert read == [0, 0, 0, 50, 0]
    assert sum(int(node.get("Rows Removed by Filter", 0)) for node in scans) == 0
    # Index pages: a descent per scan and the leaf the 50 lie on, not the leaves of the
    # held rows (3,000 entries fill about 15; measured 18 pages in all, 32 when the scan
    # below the span was one row comparison, which with ties read every entry).
    # (EXPLAIN counts the span's subqueries, about 10 pages, in the first scan.)
    assert _pages(scans) <= 24, _pages(scans)


async def _schema_with_three_events(
    url: str, version: int, deadlines: tuple[float, float, float]
) -> None:
    """The schema as migrated up to ``version``, with queue rows 1, 2, 3 ('a', 'b', 'c')
    of pixel 111 at ``deadlines``, all ready."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn, tuple(m for m in MIGRATIONS if m.version <= version))
    with psycopg.connect(url, autocommit=True) as conn:
        for queue_id, (event_id, deadline) in enumerate(zip("abc", deadlines, strict=True), 1):
            conn.execute(
                "INSERT INTO capirelay_queue (id, pixel_id, event_name, event_id, payload,"
                " event_time, deadline, source, queued_at, state, available_at)"
                " OVERRIDING SYSTEM VALUE"
                " VALUES (%s, '111', 'Purchase', %s, '{}', 1, %s, 'api', 1, 0, 1)",
                (queue_id, event_id, deadline),
            )


async def test_upgrade_from_0012_fills_the_spans_of_live_leases(postgres_url: str) -> None:
    await _schema_with_three_events(postgres_url, 12, (500, 700, 600))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO capirelay_leases (lease_id, pixel_id, owner, until, ids) VALUES"
            " ('live', '111', NULL, 2e9, '{1,2}'), ('emptied', '111', NULL, 2e9, '{9}')"
        )
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        assert await migrate(conn, tuple(m for m in MIGRATIONS if m.version <= 13)) == [13]
    # A lease whose rows are all gone keeps no span: "anywhere", the safe reading.
    assert _spans(postgres_url) == {"live": (500.0, 700.0), "emptied": (None, None)}


# ----------------------------------------------------------------------------------------
# The polls that ask whether a pixel has work (`due_pixels`, every replica every
# `poll_seconds`; `next_due_at`, an idle worker) read around the same spans.


async def test_a_pixel_whose_ready_rows_are_all_held_is_not_due_until_its_leases_end(
    open_replica: OpenReplica,
) -> None:
    box = await _queue(open_replica, 6)
    first = await _lease(box, 3)
    assert await box.due_pixels(now=T0) == ["111"]  # e3..e5 above the span
    await _lease(box, 3)
    assert await box.due_pixels(now=T0) == []
    assert await box.next_due_at("111") == T0 + LEASE
    # Given back inside the span (e0 and e2 still held around it): due again at once.
    await box.release([first[1].id], lease_id=first[1].lease_id)
    assert await box.due_pixels(now=T0) == ["111"]
    assert await box.next_due_at("111") == T0
    # Once the leases run out their rows are due to any replica.
    assert await box.due_pixels(now=T0 + LEASE) == ["111"]


async def test_the_polls_check_rows_inside_a_span_against_the_held_ids(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    # Tied deadlines, and the one unheld row given back between held rows of its lease.
    box = await open_replica(listen=False)
    await box.enqueue([event(f"e{i}", T0 + DAY) for i in range(6)], now=T0)
    held = await _lease(box, 6)
    assert await box.due_pixels(now=T0) == []
    await box.release([held[2].id], lease_id=held[2].lease_id)
    assert await box.due_pixels(now=T0) == ["111"]
    assert await box.next_due_at("111") == T0
    [again] = await _lease(box, 6)
    assert again.event_id == "e2"
    assert await box.due_pixels(now=T0) == []
    # Leases written without a span (before 0013) hold their rows anywhere.
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE capirelay_leases SET first_deadline = NULL, last_deadline = NULL")
    assert await box.due_pixels(now=T0) == []
    assert await box.next_due_at("111") == T0 + LEASE


@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "tied"])
async def test_the_polls_read_no_held_row_when_the_pixel_has_rows_above_the_span(
    open_replica: OpenReplica, postgres_url: str, tied: bool
) -> None:
    box = await _queue(open_replica, 3000, tied=tied)
    for _ in range(3):
        await _lease(box, 500)  # 1,500 held, the earliest (deadline, id)
    for name, params in (
        ("due_pixels", {"now": T0}),
        ("next_due_at_pixel", {"pixel_id": "111"}),
    ):
        scans = _ready_scans(postgres_url, name, params)
        ready_rows = sum(  # rows the scans returned and rows their filters dropped
            (int(node["Actual Rows"]) + int(node.get("Rows Removed by Filter", 0)))
            * int(node["Actual Loops"])
            for node in scans
        )
        # The loose index scan's first pixel, the next pixel probe (none), and one row
        # above the span; not the 1,500 held rows in front of it, nor their pages.
        assert ready_rows <= 3, (name, ready_rows)
        # Measured 12 (due_pixels) and 22 (next_due_at, with its span's subqueries); a
        # scan that reads past the held entries adds about 15.
        assert _pages(scans) <= {"due_pixels": 16, "next_due_at_pixel": 26}[name], (
            name,
            _pages(scans),
        )


async def test_a_lease_written_by_0013_code_holds_its_rows_among_tied_deadlines(
    open_replica: OpenReplica, postgres_url: str
) -> None:
    # During an upgrade a replica still running 0013's code records deadlines, no ids.
    box = await _queue(open_replica, 9, tied=True)
    old = await _lease(box, 3)
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE capirelay_leases SET first_id = NULL, last_id = NULL")
    rest = await _lease(box, 10)
    assert len(rest) == 6 and not {e.id for e in rest} & {e.id for e in old}
    assert await _lease(box, 10) == []
    assert await box.due_pixels(now=T0) == []


async def test_upgrade_from_0013_orders_the_ready_index_by_id_and_keeps_live_leases(
    postgres_url: str,
) -> None:
    await _schema_with_three_events(postgres_url, 13, (500, 500, 500))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO capirelay_leases (lease_id, pixel_id, owner, until, ids,"
            " first_deadline, last_deadline) VALUES ('live', '111', NULL, 2e9, '{1,3}', 500, 500)"
        )
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        assert await migrate(conn, tuple(m for m in MIGRATIONS if m.version <= 14)) == [14]
    with psycopg.connect(postgres_url) as conn:
        definition = conn.execute(
            "SELECT pg_get_indexdef('capirelay_queue_ready'::regclass)"
        ).fetchone()
        lease = conn.execute(
            "SELECT ids, first_id, last_id FROM capirelay_leases WHERE lease_id = 'live'"
        ).fetchone()
    assert definition is not None
    assert "(pixel_id, deadline, id) WHERE (state = 0)" in definition[0]
    assert lease == ([1, 3], None, None)
    box = PostgresOutbox(postgres_url, pool_size=1, listen=False)
    await box.open()
    try:
        taken = await box.lease("111", limit=10, lease_seconds=LEASE, now=T0)
        assert [e.event_id for e in taken] == ["b"]
    finally:
        await box.close()
