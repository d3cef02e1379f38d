"""Upgrading a populated 0008 schema to 0009 (queue ids on dedup keys, leaner indexes)
loses nothing: every table keeps its rows, pinned keys name their queue rows, and the
gateway's view of the data (dedup, trace, expiry, pruning) is what it was."""

from __future__ import annotations

import psycopg
from pg_replicas import table_counts

from capirelay.outbox import EnqueueStatus, NewEvent
from capirelay.outbox.base import DEDUP_WINDOW_SECONDS
from capirelay.outbox.postgres import PostgresOutbox
from capirelay.outbox.postgres.migrate import MIGRATIONS, migrate
from capirelay.outbox.receipts import MetaAnswer

T0 = 1_800_000_000.0
BEFORE = tuple(m for m in MIGRATIONS if m.version <= 8)
UP_TO_0009 = tuple(m for m in MIGRATIONS if m.version <= 9)

# One or more rows in every table, written as the 0008 code wrote them.  Queue: q1 ready,
# q2 leased, orphan (a queued event whose key row is missing); dedup: q1 and q2 pinned,
# sent (delivered, unpinned).
ROWS_0008 = """
INSERT INTO capirelay_queue (id, pixel_id, event_name, event_id, payload, event_time, deadline,
                             source, queued_at, state, available_at, lease_owner, lease_id)
OVERRIDING SYSTEM VALUE VALUES
    (1, '111', 'Purchase', 'q1', '\\x7b7d', 1, %(t)s + 86400, 'api', %(t)s, 0, %(t)s, NULL, NULL),
    (2, '111', 'Purchase', 'q2', '\\x7b7d', 1, %(t)s + 86400, 'api', %(t)s, 2, %(t)s + 60,
     gen_random_uuid(), 'lease-a'),
    (3, '111', 'Lead', 'orphan', '\\x7b7d', 1, %(t)s + 86400, 'api', %(t)s, 0, %(t)s, NULL, NULL);
SELECT setval('capirelay_queue_id_seq', 3);
INSERT INTO capirelay_dedup (pixel_id, event_name, event_id, seen_at, queued) VALUES
    ('111', 'Purchase', 'q1', %(t)s, true),
    ('111', 'Purchase', 'q2', %(t)s, true),
    ('111', 'Purchase', 'sent', %(t)s, false);
INSERT INTO capirelay_dead_letters (pixel_id, event_name, event_id, payload, event_time,
                                    deadline, source, queued_at, reason, dead_at)
VALUES ('111', 'Purchase', 'dead', '\\x7b7d', 1, %(t)s, 'api', %(t)s, 'invalid', %(t)s);
INSERT INTO capirelay_pixel_state (pixel_id, hold_until, hold_seconds, reason, updated_at)
VALUES ('222', %(t)s + 30, 30, 'throttle', %(t)s);
INSERT INTO capirelay_order_ledger (key, seen_at)
VALUES ('\\x00112233445566778899aabbccddeeff', %(t)s);
INSERT INTO capirelay_receipts (pixel_id, event_name, event_id, outcome, source, recorded_at,
                                attempts, order_key)
VALUES ('111', 'Purchase', 'sent', 'delivered', 'api', %(t)s, 1, 'abcd');
INSERT INTO capirelay_erasures (requested_at, field, value_sha256, queued, dead_letters, receipts)
VALUES (%(t)s, 'em', 'ff', 0, 0, 0);
INSERT INTO capirelay_operator_audit (at, actor, action, target, count, origin)
VALUES (%(t)s, 'admin', 'purge', 'all', 0, 'cli');
INSERT INTO capirelay_revoked_sessions (session_hash, expires_at) VALUES ('cc', %(t)s + 60);
INSERT INTO capirelay_meta_checks (pixel_id, key, source, failing, result, title, message,
                                   action_uri, changed_at, checked_at)
VALUES ('111', 'k', 'da_checks', true, 'FAILED', 't', 'm', '', %(t)s, %(t)s);
INSERT INTO capirelay_meta_check_history (pixel_id, key, failing, result, title, message, at)
VALUES ('111', 'k', true, 'FAILED', 't', 'm', %(t)s);
INSERT INTO capirelay_meta_runs (pixel_id, ran_at, summary) VALUES ('111', %(t)s, '{}');
INSERT INTO capirelay_delivered_hourly (pixel_id, event_name, hour, sent, acknowledged)
VALUES ('111', 'Purchase', 1, 1, 1);
INSERT INTO capirelay_meta_lease (name, holder, until) VALUES ('meta', 'g1', %(t)s);
"""


def _indexes(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    return {r[0] for r in rows}


def event(event_id: str, event_name: str = "Purchase") -> NewEvent:
    return NewEvent("111", event_name, event_id, b"{}", int(T0), T0 + 86400)


async def test_upgrade_from_0008_with_rows_in_every_table(postgres_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        assert await migrate(conn, BEFORE) == [m.version for m in BEFORE]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        # Several statements: sent as one simple query, the time written in.
        conn.execute(ROWS_0008.replace("%(t)s", repr(T0)).encode())
        before = table_counts(conn)
    assert all(before.values()), before

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        assert await migrate(conn, UP_TO_0009) == [9]

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        after = table_counts(conn)
        # Nothing lost; the queued event that had no key got one (seen when it was queued).
        assert after == {
            **before,
            "capirelay_dedup": before["capirelay_dedup"] + 1,
            "capirelay_receipt_batches": 0,  # new: delivered receipts, one row per ack
        }
        keys = dict(
            conn.execute("SELECT event_id, queue_id FROM capirelay_dedup ORDER BY event_id")
        )
        assert keys == {"orphan": 3, "q1": 1, "q2": 2, "sent": None}
        pk = conn.execute("SELECT pg_get_indexdef('capirelay_dedup_pkey'::regclass)").fetchone()
        assert pk is not None and "(event_id, event_name, pixel_id)" in pk[0]
        indexes = _indexes(conn)
        assert "capirelay_queue_by_event_id" not in indexes
        assert "capirelay_receipts_by_recorded_at" not in indexes
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = 'capirelay_dedup'"
            )
        }
        assert "queued" not in columns

    # The outbox applies 0010 (leases in a table) on open: lease-a becomes one of its rows.
    box = PostgresOutbox(postgres_url, pool_size=2, listen=False)
    await box.open()
    try:
        # Pinned keys stay duplicates even past the window; the delivered one's key expires.
        later = T0 + DEDUP_WINDOW_SECONDS + 3600
        assert await box.expire_dedup(now=later) == 1
        statuses = await box.enqueue(
            [event("q1"), event("q2"), event("orphan", "Lead"), event("sent")], now=later
        )
        assert statuses == [EnqueueStatus.DUPLICATE] * 3 + [EnqueueStatus.QUEUED]
        # Trace finds queued events through their keys, receipts by event id.
        assert [p.where for p in (await box.trace("q2")).pending] == ["queue"]
        assert [p.where for p in (await box.trace("dead")).pending] == ["dead_letters"]
        assert [r.outcome for r in (await box.trace("sent")).receipts] == ["delivered"]
        # The upgraded lease (lease-a) is still settled by its holder; its key unpins, and
        # its receipt goes into a batch row beside the per-event receipt kept from 0008.
        await box.ack_delivered([2], now=later, lease_id="lease-a", answer=MetaAnswer("F", 1))
        [delivered] = (await box.trace("q2")).receipts
        assert (delivered.outcome, delivered.fbtrace_id, delivered.attempts) == (
            "delivered",
            "F",
            1,
        )
        assert await box.receipt_count() == 2
        assert await box.expire_dedup(now=later + 1) == 1
        assert (await box.enqueue([event("q2")], now=later + 2)) == [EnqueueStatus.QUEUED]
        assert await box.prune_receipts(now=later, retention_seconds=86400, cap=100) == 1
        assert await box.prune_receipts(now=later, retention_seconds=86400, cap=0) == 1
        assert await box.receipt_count() == 0
    finally:
        await box.close()
