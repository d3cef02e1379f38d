"""Upgrading a populated 0009 schema to 0010 (leases as rows of their own) loses nothing:
every table keeps its rows, leased rows become leases under the same id, holder and end,
and the gateway's view (leases, settles, lapses, dedup pins) is what it was."""

from __future__ import annotations

import psycopg
from pg_replicas import table_counts

from capirelay.outbox import EnqueueStatus, NewEvent
from capirelay.outbox.postgres import PostgresOutbox
from capirelay.outbox.postgres.migrate import MIGRATIONS, migrate

T0 = 1_800_000_000.0
UP_TO_0009 = tuple(m for m in MIGRATIONS if m.version <= 9)
UP_TO_0010 = tuple(m for m in MIGRATIONS if m.version <= 10)
OWNER = "5f0c6a1e-0000-4000-8000-000000000001"

# The queue as 0009 wrote it: q1 ready; q2 and q3 leased under lease-a (until T0 + 60);
# q4 leased before lease ids existed (0003); q5 backing off.  Dedup keys name their rows.
# One row in every other table.
ROWS_0009 = """
INSERT INTO capirelay_queue (id, pixel_id, event_name, event_id, payload, event_time, deadline,
                             source, queued_at, state, available_at, lease_owner, lease_id,
                             attempts)
OVERRIDING SYSTEM VALUE VALUES
    (1, '111', 'Purchase', 'q1', '\\x7b7d', 1, %(t)s + 86400, 'api', %(t)s, 0, %(t)s, NULL,
     NULL, 0),
    (2, '111', 'Purchase', 'q2', '\\x7b7d', 1, %(t)s + 86400, 'api', %(t)s, 2, %(t)s + 60,
     '{owner}', 'lease-a', 0),
    (3, '111', 'Purchase', 'q3', '\\x7b7d', 1, %(t)s + 86400, 'api', %(t)s, 2, %(t)s + 60,
     '{owner}', 'lease-a', 0),
    (4, '111', 'Purchase', 'q4', '\\x7b7d', 1, %(t)s + 86400, 'api', %(t)s, 2, %(t)s + 45,
     NULL, NULL, 0),
    (5, '111', 'Purchase', 'q5', '\\x7b7d', 1, %(t)s + 86400, 'api', %(t)s, 1, %(t)s + 90,
     NULL, NULL, 1);
SELECT setval('capirelay_queue_id_seq', 5);
INSERT INTO capirelay_dedup (pixel_id, event_name, event_id, seen_at, queue_id) VALUES
    ('111', 'Purchase', 'q1', %(t)s, 1), ('111', 'Purchase', 'q2', %(t)s, 2),
    ('111', 'Purchase', 'q3', %(t)s, 3), ('111', 'Purchase', 'q4', %(t)s, 4),
    ('111', 'Purchase', 'q5', %(t)s, 5), ('111', 'Purchase', 'sent', %(t)s, NULL);
INSERT INTO capirelay_dead_letters (pixel_id, event_name, event_id, payload, event_time,
                                    deadline, source, queued_at, reason, dead_at)
VALUES ('111', 'Purchase', 'dead', '\\x7b7d', 1, %(t)s, 'api', %(t)s, 'invalid', %(t)s);
INSERT INTO capirelay_pixel_state (pixel_id, hold_until, hold_seconds, reason, updated_at)
VALUES ('222', %(t)s + 30, 30, 'throttle', %(t)s);
INSERT INTO capirelay_order_ledger (key, seen_at)
VALUES ('\\x00112233445566778899aabbccddeeff', %(t)s);
INSERT INTO capirelay_receipts (pixel_id, event_name, event_id, outcome, source, recorded_at,
                                attempts, order_key)
VALUES ('111', 'Purchase', 'old', 'duplicate', 'api', %(t)s, 0, NULL);
INSERT INTO capirelay_receipt_batches (recorded_at, events, pixel_ids, event_names, event_ids,
    sources, received_at, first_attempt_at, attempts, test_event_codes, attempt_logs,
    order_keys, identities)
VALUES (%(t)s, 1, '{{111}}', '{{Purchase}}', '{{sent}}', '{{api}}', '{{NULL}}', '{{NULL}}',
        '{{1}}', '{{NULL}}', '{{NULL}}', '{{NULL}}', '{{NULL}}');
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
INSERT INTO capirelay_meta_runs (pixel_id, ran_at, summary) VALUES ('111', %(t)s, '{{}}');
INSERT INTO capirelay_delivered_hourly (pixel_id, event_name, hour, sent, acknowledged)
VALUES ('111', 'Purchase', 1, 1, 1);
INSERT INTO capirelay_meta_lease (name, holder, until) VALUES ('meta', 'g1', %(t)s);
"""


def event(event_id: str) -> NewEvent:
    return NewEvent("111", "Purchase", event_id, b"{}", int(T0), T0 + 86400)


async def test_upgrade_from_0009_with_rows_in_every_table(postgres_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        assert await migrate(conn, UP_TO_0009) == [m.version for m in UP_TO_0009]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        sql = ROWS_0009.format(owner=OWNER).replace("%(t)s", repr(T0))
        conn.execute(sql.encode())
        before = table_counts(conn)
    assert all(before.values()), before

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        assert await migrate(conn, UP_TO_0010) == [10]

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert table_counts(conn) == {**before, "capirelay_leases": 1}
        [lease] = conn.execute(
            "SELECT lease_id, pixel_id, owner::text, until, ids FROM capirelay_leases"
        )
        assert lease == ("lease-a", "111", OWNER, T0 + 60, [2, 3])
        rows = conn.execute("SELECT event_id, state, available_at FROM capirelay_queue")
        assert {r[0]: (r[1], r[2]) for r in rows} == {
            "q1": (0, T0),
            "q2": (0, T0 + 60),
            "q3": (0, T0 + 60),
            "q4": (1, T0 + 45),  # no lease id: waits out its old lease as a backoff
            "q5": (1, T0 + 90),
        }
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = 'capirelay_queue'"
            )
        }
        assert not {"lease_owner", "lease_id"} & columns

    box = PostgresOutbox(postgres_url, pool_size=2, listen=False)
    await box.open()
    try:
        stats = await box.stats(now=T0)
        assert (stats.depth, stats.leased, stats.dlq_size) == (5, 2, 1)
        # Only q1 is free now; q4 comes back at T0 + 45, lease-a's rows at T0 + 60.
        assert [e.event_id for e in await box.lease("111", limit=10, lease_seconds=30, now=T0)] == [
            "q1"
        ]
        assert await box.next_due_at("111") == T0 + 30
        # Every queued key is still pinned: a resend is a duplicate.
        assert (
            await box.enqueue([event(f"q{i}") for i in range(1, 6)], now=T0 + 1)
            == [EnqueueStatus.DUPLICATE] * 5
        )
        # The upgraded lease is settled by its holder, under its id.
        await box.ack([2], now=T0 + 2, lease_id="lease-a")
        assert (await box.stats(now=T0 + 2)).leased == 2  # q3 (lease-a) and q1
        got = await box.lease("111", limit=10, lease_seconds=30, now=T0 + 60)
        assert sorted(e.event_id for e in got) == ["q1", "q3", "q4"]
        await box.release([3], lease_id="lease-a")  # retaken meanwhile: nothing happens
        assert (await box.stats(now=T0 + 60)).leased == 3
        assert [r.outcome for r in (await box.trace("sent")).receipts] == ["delivered"]
    finally:
        await box.close()
