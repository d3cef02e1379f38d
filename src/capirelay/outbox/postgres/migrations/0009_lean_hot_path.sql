-- capirelay PostgreSQL outbox, migration 0009: fewer index writes per delivered event.
--
-- Measured (bench/postgres.py, docs/postgres.md "What changed"): index maintenance is
-- most of the database's CPU per event.  This migration removes three per-event index
-- writes and one per-event update without losing what they served:
--
-- * capirelay_dedup.queue_id replaces the `queued` pin (0003).  A key is pinned while
--   the queue row it names exists: enqueue assigns the queue row's id up front and
--   stores it with the key, the takeover of an old key and expire_dedup check that row
--   by primary key.  Ack no longer updates the key at all (it was a per-event UPDATE).
-- * The dedup primary key leads with event_id (same columns, same uniqueness): trace
--   and GET /v1/events/{event_id} find a queued event through its key (event_id ->
--   queue_id -> queue row), so the queue needs no event_id index.  Every lease rewrote
--   the queue row and with it an entry of that index.
-- * Delivered events' receipts are written one row per acked batch
--   (capirelay_receipt_batches: Meta's answer once, the events' fields as parallel
--   arrays) instead of one row and three index entries per event.  `capirelay trace`
--   finds an event's batch through a GIN index on its event ids (fastupdate: entries are
--   appended to a pending list and merged into the index in bulk).  Receipts of other
--   outcomes (duplicates, dropped, dead-lettered) stay one row each in
--   capirelay_receipts, as do the delivered receipts written before this migration.
-- * Receipts are pruned oldest-id first (ids follow recording order), so their
--   recorded_at index goes.
--
-- Existing rows: every queued event's key gets its queue row's id (a queued event whose
-- key is missing gets one, seen when it was queued); keys of events no longer queued
-- are unpinned, as the ack would have left them.  Dedup rows no longer change after
-- their insert, so new pages are filled completely again (0008's fillfactor was room
-- for the unpin).

ALTER TABLE capirelay_dedup ADD COLUMN queue_id bigint;

UPDATE capirelay_dedup AS d SET queue_id = q.id
FROM capirelay_queue AS q
WHERE d.pixel_id = q.pixel_id AND d.event_name = q.event_name AND d.event_id = q.event_id;

INSERT INTO capirelay_dedup (pixel_id, event_name, event_id, seen_at, queue_id)
SELECT DISTINCT ON (pixel_id, event_name, event_id)
       pixel_id, event_name, event_id, queued_at, id
FROM capirelay_queue AS q
WHERE NOT EXISTS (
    SELECT 1 FROM capirelay_dedup AS d
    WHERE d.pixel_id = q.pixel_id AND d.event_name = q.event_name AND d.event_id = q.event_id
)
ORDER BY pixel_id, event_name, event_id, id;

ALTER TABLE capirelay_dedup DROP COLUMN queued;

ALTER TABLE capirelay_dedup
    DROP CONSTRAINT capirelay_dedup_pkey,
    ADD CONSTRAINT capirelay_dedup_pkey PRIMARY KEY (event_id, event_name, pixel_id);

ALTER TABLE capirelay_dedup SET (fillfactor = 100);

DROP INDEX capirelay_queue_by_event_id;

DROP INDEX capirelay_receipts_by_recorded_at;

CREATE TABLE capirelay_receipt_batches (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at      double precision NOT NULL,
    last_attempt_at  double precision,
    fbtrace_id       text,
    events_received  integer,
    events           integer          NOT NULL,
    pixel_ids        text[]           NOT NULL,
    event_names      text[]           NOT NULL,
    event_ids        text[]           NOT NULL,
    sources          text[]           NOT NULL,
    received_at      double precision[] NOT NULL,
    first_attempt_at double precision[] NOT NULL,
    attempts         integer[]        NOT NULL,
    test_event_codes text[]           NOT NULL,
    attempt_logs     text[]           NOT NULL,
    order_keys       text[]           NOT NULL,
    identities       text[]           NOT NULL
);

CREATE INDEX capirelay_receipt_batches_by_event_id ON capirelay_receipt_batches
    USING gin (event_ids) WITH (fastupdate = on);

-- The arrays are compressed when a batch row is stored: lz4 costs a fraction of the
-- default pglz's CPU.  Servers built without lz4 keep pglz.
DO $$
BEGIN
    ALTER TABLE capirelay_receipt_batches
        ALTER COLUMN pixel_ids SET COMPRESSION lz4,
        ALTER COLUMN event_names SET COMPRESSION lz4,
        ALTER COLUMN event_ids SET COMPRESSION lz4,
        ALTER COLUMN sources SET COMPRESSION lz4,
        ALTER COLUMN received_at SET COMPRESSION lz4,
        ALTER COLUMN first_attempt_at SET COMPRESSION lz4,
        ALTER COLUMN attempts SET COMPRESSION lz4,
        ALTER COLUMN test_event_codes SET COMPRESSION lz4,
        ALTER COLUMN attempt_logs SET COMPRESSION lz4,
        ALTER COLUMN order_keys SET COMPRESSION lz4,
        ALTER COLUMN identities SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;
