"""The delivery path's statements keep their index plans when the queue's statistics are
stale.

A backlog builds up faster than autovacuum re-analyzes the queue (an outage, an import,
a burst): the planner then believes a pixel has a handful of ready rows.  Left to
itself it reads them with a bitmap scan and a sort, that is every ready row of the
pixel for each lease, and hashes every ready row of the queue on each due-pixel poll;
measured on a 100,000-event drain, that was 76 ms a lease and 42 ms a poll, and the
database's CPU per delivered event went from 13.5 to 41 us.  Here the statistics are
left to the planner's defaults on purpose (never analyzed, autovacuum off for the
table), and
the plans are read back with EXPLAIN ANALYZE: the rows the statements read from the
queue must be about what they return, not the backlog.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from capirelay.outbox import NewEvent
from capirelay.outbox.postgres import PostgresOutbox
from capirelay.outbox.postgres._statements import QUERIES
from capirelay.outbox.postgres.outbox import LEASE_URGENT_SECONDS

T0 = 1_800_000_000.0
BACKLOG = 12_000
PAYLOAD = b'{"event_name": "Purchase", "pad": "' + b"x" * 680 + b'"}'
LIMIT = 10


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _queue_rows_read(plan: dict[str, Any]) -> int:
    """Rows the plan's scans of capirelay_queue produced, over all their loops."""
    return sum(
        int(node["Actual Rows"]) * int(node["Actual Loops"])
        for node in _nodes(plan)
        if node.get("Relation Name") == "capirelay_queue"
    )


def _explain(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> dict[str, Any]:
    row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {QUERIES[name]}", params).fetchone()
    assert row is not None
    return dict(row[0][0]["Plan"])


@pytest.fixture
async def stale_backlog(postgres_url: str) -> str:
    """A schema whose queue holds BACKLOG ready events of pixel 111 and has never been
    analyzed (autovacuum is off for the table): the planner guesses from defaults, as
    it does for a backlog that built up since the last ANALYZE.  Fillfactor 10 spreads
    the rows over as many pages as a backlog ten times larger (the planner's guess
    grows with the pages), so the test stays quick."""
    box = PostgresOutbox(postgres_url, pool_size=1, listen=False)
    await box.open()
    try:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(
                "ALTER TABLE capirelay_queue SET (fillfactor = 10, autovacuum_enabled = false)"
            )
        for start in range(0, BACKLOG, 500):
            batch = [
                NewEvent("111", "Purchase", f"e{i}", PAYLOAD, int(T0), T0 + 86400 + i % 13)
                for i in range(start, start + 500)
            ]
            await box.enqueue(batch, now=T0)
    finally:
        await box.close()
    return postgres_url


def _lease_params() -> dict[str, Any]:
    return {
        "pixel_id": "111",
        "now": T0 + 1,
        "limit": LIMIT,
        "lease_until": T0 + 31,
        "urgent_before": T0 + 1 + LEASE_URGENT_SECONDS,
        "owner": "00000000-0000-0000-0000-000000000001",
        "lease_id": "explain",
    }


def test_the_premise_holds_the_planner_alone_reads_the_whole_backlog(stale_backlog: str) -> None:
    """Without the lease transaction's settings the stale statistics do mislead the
    planner on the shape every delivery statement has (a pixel's ready rows in deadline
    order, the first few); otherwise the next test would prove nothing.  (Since 0013 the
    lease itself bounds each of its parts by its span, a parameter the planner cannot
    see, and it keeps the index plan even without the settings.)"""
    with psycopg.connect(stale_backlog) as conn:
        row = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT id, payload FROM capirelay_queue"
            " WHERE pixel_id = '111' AND state = 0 ORDER BY deadline LIMIT %s",
            (LIMIT,),
        ).fetchone()
        conn.rollback()
    assert row is not None
    assert _queue_rows_read(dict(row[0][0]["Plan"])) >= BACKLOG


def test_a_lease_reads_about_what_it_takes_whatever_the_statistics(stale_backlog: str) -> None:
    with psycopg.connect(stale_backlog) as conn:
        conn.execute(QUERIES["lock_pixel"], {"pixel_id": "111"})
        conn.execute(QUERIES["lock_lapsed_leases"], {"pixel_id": "111", "now": T0 + 1})
        promote = _explain(conn, "promote_due", {"pixel_id": "111", "now": T0 + 1, "promote": 40})
        lease = _explain(conn, "lease", _lease_params())
        conn.rollback()
    assert _queue_rows_read(lease) == LIMIT
    scans = {n["Node Type"] for n in _nodes(lease) if n.get("Relation Name") == "capirelay_queue"}
    assert scans == {"Index Scan"}
    assert _queue_rows_read(promote) == 0  # nothing is waiting: one probe of the index


def test_a_due_pixel_poll_reads_a_row_per_pixel_not_the_backlog(stale_backlog: str) -> None:
    with psycopg.connect(stale_backlog) as conn:
        plan = _explain(conn, "due_pixels", {"now": T0 + 1})
        due = conn.execute(QUERIES["due_pixels"], {"now": T0 + 1}).fetchall()
        conn.rollback()
    assert due == [("111",)]
    # The loose index scan steps to the one pixel and past it; the EXISTS stops at the
    # pixel's first ready row.
    assert _queue_rows_read(plan) <= 5
