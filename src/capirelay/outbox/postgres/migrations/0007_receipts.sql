-- capirelay PostgreSQL outbox, migration 0004: receipts, erasure audit, event-id lookups.
--
-- capirelay_receipts: one row per event that reached a final state (delivered,
-- dead-lettered, answered duplicate, dropped by policy); hash-only (see
-- capirelay.outbox.receipts).  Written in the transaction of the ack or dead-letter move
-- it records.  Repeated duplicates of one key bump `count` on one row.  Pruned in chunks
-- by recorded_at (retention) and by id (cap): an insert-mostly table, vacuumed after
-- bulk deletes by the default autovacuum.
-- capirelay_erasures: the audit trail of erasure requests (identifier digest, time,
-- what was removed).  No raw value.
-- Queue and dead letters by event_id: `capirelay trace` and GET /v1/events/{event_id}
-- find a pending event by one index probe.

CREATE TABLE capirelay_receipts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pixel_id         text             NOT NULL,
    event_name       text             NOT NULL,
    event_id         text             NOT NULL,
    outcome          text             NOT NULL,
    source           text             NOT NULL,
    recorded_at      double precision NOT NULL,
    received_at      double precision,
    first_attempt_at double precision,
    last_attempt_at  double precision,
    attempts         integer          NOT NULL DEFAULT 0,
    fbtrace_id       text,
    events_received  integer,
    test_event_code  text,
    reason           text,
    problems         jsonb,
    attempt_log      jsonb,
    order_key        text,
    identity         text,
    count            integer          NOT NULL DEFAULT 1
);

CREATE INDEX capirelay_receipts_by_event_id ON capirelay_receipts (event_id);
CREATE INDEX capirelay_receipts_by_recorded_at ON capirelay_receipts (recorded_at);
CREATE INDEX capirelay_receipts_by_order_key ON capirelay_receipts (order_key)
    WHERE order_key IS NOT NULL;

CREATE TABLE capirelay_erasures (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    requested_at  double precision NOT NULL,
    field         text             NOT NULL,
    value_sha256  text             NOT NULL,
    pixel_id      text,
    queued        integer          NOT NULL,
    dead_letters  integer          NOT NULL,
    receipts      integer          NOT NULL
);

CREATE INDEX capirelay_queue_by_event_id ON capirelay_queue (event_id);
CREATE INDEX capirelay_dead_letters_by_event_id ON capirelay_dead_letters (event_id);
