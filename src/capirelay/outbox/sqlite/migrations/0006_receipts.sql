-- capirelay SQLite outbox, schema version 3: receipts, erasure audit, event-id lookups.
--
-- receipts: one row per event that reached a final state (delivered, dead-lettered,
-- answered duplicate, dropped by policy); hash-only (see capirelay.outbox.receipts).
-- Repeated duplicates of one key update a single row (count, recorded_at untouched) so
-- a retrying client cannot write a row per request.  Pruned by recorded_at (retention)
-- and by id (cap); ids grow with time, so the oldest go first.
-- erasures: the audit trail of erasure requests: which identifier hash, when, and what
-- was removed.  No raw value.
-- queue/dead_letters by event_id: `capirelay trace` and GET /v1/events/{event_id}
-- find a queued or dead-lettered event by one index probe.

CREATE TABLE receipts (
    id               INTEGER PRIMARY KEY,
    pixel_id         TEXT    NOT NULL,
    event_name       TEXT    NOT NULL,
    event_id         TEXT    NOT NULL,
    outcome          TEXT    NOT NULL,
    source           TEXT    NOT NULL,
    recorded_at      REAL    NOT NULL,
    received_at      REAL,
    first_attempt_at REAL,
    last_attempt_at  REAL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    fbtrace_id       TEXT,
    events_received  INTEGER,
    test_event_code  TEXT,
    reason           TEXT,
    problems         TEXT,
    attempt_log      TEXT,
    order_key        TEXT,
    identity         TEXT,
    count            INTEGER NOT NULL DEFAULT 1
);

CREATE INDEX receipts_by_event_id ON receipts (event_id);
CREATE INDEX receipts_by_recorded_at ON receipts (recorded_at);
CREATE INDEX receipts_by_order_key ON receipts (order_key) WHERE order_key IS NOT NULL;

CREATE TABLE erasures (
    id            INTEGER PRIMARY KEY,
    requested_at  REAL    NOT NULL,
    field         TEXT    NOT NULL,
    value_sha256  TEXT    NOT NULL,
    pixel_id      TEXT,
    queued        INTEGER NOT NULL,
    dead_letters  INTEGER NOT NULL,
    receipts      INTEGER NOT NULL
);

CREATE INDEX queue_by_event_id ON queue (event_id);
CREATE INDEX dead_letters_by_event_id ON dead_letters (event_id);
