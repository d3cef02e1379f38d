"""Migration 0011: the receipt batches' GIN index on event ids takes its entries directly
(fastupdate off), and the entries 0009's pending list still held are merged, so a trace
finds every delivered event through the index proper."""

from __future__ import annotations

import psycopg

from capirelay.outbox.postgres.migrate import MIGRATIONS, migrate

T0 = 1_800_000_000.0
UP_TO_0010 = tuple(m for m in MIGRATIONS if m.version <= 10)
UP_TO_0011 = tuple(m for m in MIGRATIONS if m.version <= 11)


def _pending_pages(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    # gin_clean_pending_list merges what is pending and says how many pages it cleared.
    row = conn.execute(
        "SELECT gin_clean_pending_list('capirelay_receipt_batches_by_event_id')"
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_pending_entries_are_merged_and_new_ones_go_straight_in(postgres_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await migrate(conn, UP_TO_0010)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO capirelay_receipt_batches (recorded_at, events, pixel_ids, event_names,"
            " event_ids, sources, received_at, first_attempt_at, attempts, test_event_codes,"
            " attempt_logs, order_keys, identities)"
            " SELECT %s, 2, '{111,111}', '{Purchase,Purchase}',"
            " ARRAY['e' || n || 'a', 'e' || n || 'b'], '{api,api}', '{NULL,NULL}',"
            " '{NULL,NULL}', '{1,1}', '{NULL,NULL}', '{NULL,NULL}', '{NULL,NULL}',"
            " '{NULL,NULL}' FROM generate_series(1, 50) AS n",
            (T0,),
        )
        options = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'capirelay_receipt_batches_by_event_id'"
            "::regclass"
        ).fetchone()
        assert options is not None and options[0] == ["fastupdate=on"]
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        assert await migrate(conn, UP_TO_0011) == [11]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        options = conn.execute(
            "SELECT reloptions FROM pg_class WHERE oid = 'capirelay_receipt_batches_by_event_id'"
            "::regclass"
        ).fetchone()
        assert options is not None and options[0] == ["fastupdate=off"]
        assert _pending_pages(conn) == 0  # the migration merged them
        conn.execute(
            "INSERT INTO capirelay_receipt_batches (recorded_at, events, pixel_ids, event_names,"
            " event_ids, sources, received_at, first_attempt_at, attempts, test_event_codes,"
            " attempt_logs, order_keys, identities)"
            " VALUES (%s, 1, '{111}', '{Purchase}', '{late}', '{api}', '{NULL}', '{NULL}',"
            " '{1}', '{NULL}', '{NULL}', '{NULL}', '{NULL}')",
            (T0,),
        )
        assert _pending_pages(conn) == 0  # straight into the index
        conn.execute("SET enable_seqscan = off")
        found = conn.execute(
            "SELECT count(*) FROM capirelay_receipt_batches WHERE event_ids @> '{e7b}'"
            " OR event_ids @> '{late}'"
        ).fetchone()
        assert found == (2,)
