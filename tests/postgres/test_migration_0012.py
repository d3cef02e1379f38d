"""Upgrading a populated 0011 schema to 0012: identifiers compare as bytes (COLLATE "C")
in every capirelay table, and nothing else changes (the dedup keys' age stays a B-tree):
every row stays, queued keys stay pinned, old keys still expire, traces still find their
batches through the GIN index."""

from __future__ import annotations

from typing import Any

import psycopg
from pg_replicas import table_counts

from capirelay.orders import UNVERIFIED_ID_PREFIX
from capirelay.outbox import EnqueueStatus, NewEvent
from capirelay.outbox.base import DEDUP_WINDOW_SECONDS
from capirelay.outbox.postgres import PostgresOutbox
from capirelay.outbox.postgres._statements import QUERIES
from capirelay.outbox.postgres.migrate import MIGRATIONS, migrate
from capirelay.outbox.postgres.outbox import DEDUP_EXPIRY_START

T0 = 1_800_000_000.0
OLD = T0 - DEDUP_WINDOW_SECONDS - 3600
UP_TO_0011 = tuple(m for m in MIGRATIONS if m.version <= 11)
UP_TO_0012 = tuple(m for m in MIGRATIONS if m.version <= 12)
IDENTIFIERS = (
    "pixel_id",
    "event_name",
    "event_id",
    "lease_id",
    "pixel_ids",
    "event_names",
    "event_ids",
)

# q1 queued (its key pinned); 'old' a key past the window, 'fresh' one inside it (neither
# queued); 'sent' delivered in a receipt batch; one lease, one dead letter, one hold.
ROWS_0011 = f"""
INSERT INTO capirelay_queue (id, pixel_id, event_name, event_id, payload, event_time, deadline,
                             source, queued_at, state, available_at)
OVERRIDING SYSTEM VALUE VALUES
    (1, '111', 'Purchase', 'q1', '\\x7b7d', 1, {T0} + 86400, 'api', {T0}, 0, {T0});
SELECT setval('capirelay_queue_id_seq', 1);
INSERT INTO capirelay_dedup (pixel_id, event_name, event_id, seen_at, queue_id) VALUES
    ('111', 'Purchase', 'q1', {OLD}, 1), ('111', 'Purchase', 'old', {OLD}, NULL),
    ('111', 'Purchase', 'fresh', {T0}, NULL);
INSERT INTO capirelay_leases (lease_id, pixel_id, owner, until, ids)
VALUES ('lease-a', '222', NULL, {T0} - 10, '{{}}');
INSERT INTO capirelay_dead_letters (pixel_id, event_name, event_id, payload, event_time,
                                    deadline, source, queued_at, reason, dead_at)
VALUES ('111', 'Purchase', 'dead', '\\x7b7d', 1, {T0}, 'api', {T0}, 'invalid', {T0});
INSERT INTO capirelay_pixel_state (pixel_id, hold_until, hold_seconds, reason, updated_at)
VALUES ('222', {T0} + 30, 30, 'throttle', {T0});
INSERT INTO capirelay_receipt_batches (recorded_at, events, pixel_ids, event_names, event_ids,
    sources, received_at, first_attempt_at, attempts, test_event_codes, attempt_logs,
    order_keys, identities)
VALUES ({T0}, 1, '{{111}}', '{{Purchase}}', '{{sent}}', '{{api}}', '{{NULL}}', '{{NULL}}',
        '{{1}}', '{{NULL}}', '{{NULL}}', '{{NULL}}', '{{NULL}}');
"""


def _plan(conn: psycopg.Connection[Any], name: str, params: dict[str, object]) -> str:
    # Tiny tables: plain scans off, so the plan shows which index can serve the statement
    # (an index whose collation the statement's comparison does not share cannot).
    conn.execute("SET enable_seqscan = off")
    conn.execute("SET enable_indexscan = off")
    rows = conn.execute(f"EXPLAIN {QUERIES[name]}", params).fetchall()
    conn.execute("RESET enable_seqscan")
    conn.execute("RESET enable_indexscan")
    return "\n".join(r[0] for r in rows)


async def test_upgrade_from_0011(postgres_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        assert await migrate(conn, UP_TO_0011) == [m.version for m in UP_TO_0011]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(ROWS_0011.encode())
        before = table_counts(conn)
        default_collated = conn.execute(
            "SELECT count(*) FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid"
            " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'"
            " AND a.attname = ANY(%s) AND a.attcollation = 100",  # 100: "default"
            (list(IDENTIFIERS),),
        ).fetchone()
        assert default_collated is not None and default_collated[0] >= 20

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        assert await migrate(conn, UP_TO_0012) == [12]

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert table_counts(conn) == before
        collations = conn.execute(
            "SELECT c.relname, a.attname, co.collname FROM pg_attribute AS a"
            " JOIN pg_class AS c ON c.oid = a.attrelid"
            " JOIN pg_collation AS co ON co.oid = a.attcollation"
            " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'"
            " AND a.attname = ANY(%s) AND NOT a.attisdropped",
            (list(IDENTIFIERS),),
        ).fetchall()
        assert len(collations) == default_collated[0]
        assert {r[2] for r in collations} == {"C"}, collations
        assert {
            ("capirelay_dedup", "event_id"),
            ("capirelay_queue", "pixel_id"),
            ("capirelay_leases", "lease_id"),
            ("capirelay_receipt_batches", "event_ids"),
        } <= {(r[0], r[1]) for r in collations}
        [(method,)] = conn.execute(
            "SELECT am.amname FROM pg_class AS c JOIN pg_am AS am ON am.oid = c.relam"
            " WHERE c.oid = 'capirelay_dedup_by_seen_at'::regclass"
        )
        assert method == "btree"
        cutoff = T0 - DEDUP_WINDOW_SECONDS
        expiry = {"cutoff": cutoff, "chunk": 10, **DEDUP_EXPIRY_START}
        assert "capirelay_dedup_by_seen_at" in _plan(conn, "expire_dedup", expiry)
        assert "capirelay_receipt_batches_by_event_id" in _plan(
            conn, "batches_of_event", {"event_id": "sent"}
        )
        # Both namespaces (capirelay.orders): still through the dedup key's primary key.
        both = {"event_id": "q1", "unverified_id": UNVERIFIED_ID_PREFIX + "q1"}
        assert "capirelay_dedup_pkey" in _plan(conn, "queued_of_event", both)

    box = PostgresOutbox(postgres_url, pool_size=2, listen=False)
    await box.open()
    try:
        key = NewEvent("111", "Purchase", "q1", b"{}", int(T0), T0 + 86400)
        assert await box.enqueue([key], now=T0) == [EnqueueStatus.DUPLICATE]  # still pinned
        assert await box.expire_dedup(now=T0) == 1  # 'old' goes; q1 pinned, 'fresh' young
        with psycopg.connect(postgres_url) as conn:
            keys = {r[0] for r in conn.execute("SELECT event_id FROM capirelay_dedup")}
        assert keys == {"q1", "fresh"}
        assert [r.outcome for r in (await box.trace("sent")).receipts] == ["delivered"]
        assert [e.event_id for e in await box.lease("111", limit=5, lease_seconds=30, now=T0)] == [
            "q1"
        ]
    finally:
        await box.close()
