-- capirelay PostgreSQL outbox, migration 0001: queue, dedup keys, dead letters.
--
-- capirelay_queue.state: 0 = ready (due now, leasable), 1 = waiting (backoff until
-- available_at), 2 = leased (owned by lease_owner until available_at, then due again).
-- Like the SQLite schema, "ready" is an explicit state so that a lease reads the partial
-- index capirelay_queue_ready in deadline order and stops after `limit` rows: earliest
-- deadline first, no sort, nothing read beyond the batch even with a million-row backlog.
-- Waiting and leased rows become ready through capirelay_queue_not_ready, a partial
-- index that only ever holds rows that are not ready (a backlog waiting out an outage
-- costs a lease one index probe, not a scan).
--
-- Times are unix seconds (double precision), exactly as the Outbox interface passes them:
-- the callers own the clock, so tests and replicas agree on "now" without SQL now().

CREATE TABLE capirelay_queue (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pixel_id        text             NOT NULL,
    event_name      text             NOT NULL,
    event_id        text             NOT NULL,
    payload         bytea            NOT NULL,
    event_time      bigint           NOT NULL,
    deadline        double precision NOT NULL,
    test_event_code text,
    source          text             NOT NULL,
    queued_at       double precision NOT NULL,
    attempts        integer          NOT NULL DEFAULT 0,
    state           smallint         NOT NULL DEFAULT 0,
    available_at    double precision NOT NULL,
    lease_owner     uuid,
    attempt_log     jsonb            NOT NULL DEFAULT '[]'
) WITH (
    -- Every row is inserted, updated a few times (lease, reschedule) and deleted (ack):
    -- a queue table churns through dead tuples.  Vacuum it after 1 % of its rows died
    -- (default 20 %) so leases never wade through a bloated heap or index, and leave
    -- room on each page for the updated versions.
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);

CREATE INDEX capirelay_queue_ready ON capirelay_queue (pixel_id, deadline) WHERE state = 0;
CREATE INDEX capirelay_queue_not_ready ON capirelay_queue (pixel_id, available_at) WHERE state > 0;

-- Meta's 48 h (event_name, event_id) window, kept per pixel.  The primary key is what
-- makes dedup hold across replicas: two transactions inserting the same key serialize
-- on it, and the second one sees the first one's row (INSERT ... ON CONFLICT).
CREATE TABLE capirelay_dedup (
    pixel_id   text             NOT NULL,
    event_name text             NOT NULL,
    event_id   text             NOT NULL,
    seen_at    double precision NOT NULL,
    PRIMARY KEY (pixel_id, event_name, event_id)
) WITH (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0.1
);

CREATE INDEX capirelay_dedup_by_seen_at ON capirelay_dedup (seen_at);

CREATE TABLE capirelay_dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pixel_id        text             NOT NULL,
    event_name      text             NOT NULL,
    event_id        text             NOT NULL,
    payload         bytea            NOT NULL,
    event_time      bigint           NOT NULL,
    deadline        double precision NOT NULL,
    test_event_code text,
    source          text             NOT NULL,
    queued_at       double precision NOT NULL,
    reason          text             NOT NULL,
    error           jsonb,
    attempt_log     jsonb            NOT NULL DEFAULT '[]',
    dead_at         double precision NOT NULL
);

CREATE INDEX capirelay_dead_letters_by_dead_at ON capirelay_dead_letters (dead_at);
CREATE INDEX capirelay_dead_letters_by_reason ON capirelay_dead_letters (reason, dead_at);
CREATE INDEX capirelay_dead_letters_by_pixel ON capirelay_dead_letters (pixel_id, dead_at);
