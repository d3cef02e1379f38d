-- capirelay SQLite outbox, schema version 1.
--
-- queue.state: 0 = ready (due now, leasable), 1 = waiting (backoff until available_at),
--              2 = leased (owned by a worker until available_at, then ready again).
-- Keeping "ready" as an explicit state lets a lease read the (pixel_id, state, deadline)
-- index in deadline order and stop after `limit` rows: earliest-deadline-first without
-- sorting a million-row backlog.  Waiting and leased rows become ready through the
-- partial (pixel_id, available_at) index, which only ever holds rows that are not ready.

CREATE TABLE queue (
    id              INTEGER PRIMARY KEY,
    pixel_id        TEXT    NOT NULL,
    event_name      TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    event_time      INTEGER NOT NULL,
    deadline        REAL    NOT NULL,
    test_event_code TEXT,
    source          TEXT    NOT NULL,
    queued_at       REAL    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    state           INTEGER NOT NULL DEFAULT 0,
    available_at    REAL    NOT NULL,
    attempt_log     TEXT    NOT NULL DEFAULT '[]'
);

CREATE INDEX queue_by_state_deadline ON queue (pixel_id, state, deadline);
CREATE INDEX queue_not_ready ON queue (pixel_id, available_at) WHERE state > 0;

-- Meta's 48 h (event_name, event_id) dedup window, kept per pixel.
CREATE TABLE dedup (
    pixel_id   TEXT NOT NULL,
    event_name TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    seen_at    REAL NOT NULL,
    PRIMARY KEY (pixel_id, event_name, event_id)
) WITHOUT ROWID;

CREATE INDEX dedup_by_seen_at ON dedup (seen_at);

CREATE TABLE dead_letters (
    id              INTEGER PRIMARY KEY,
    pixel_id        TEXT    NOT NULL,
    event_name      TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    event_time      INTEGER NOT NULL,
    deadline        REAL    NOT NULL,
    test_event_code TEXT,
    source          TEXT    NOT NULL,
    queued_at       REAL    NOT NULL,
    reason          TEXT    NOT NULL,
    error           TEXT,
    attempt_log     TEXT    NOT NULL DEFAULT '[]',
    dead_at         REAL    NOT NULL
);

CREATE INDEX dead_letters_by_dead_at ON dead_letters (dead_at);
CREATE INDEX dead_letters_by_reason ON dead_letters (reason, dead_at);
CREATE INDEX dead_letters_by_pixel ON dead_letters (pixel_id, dead_at);
