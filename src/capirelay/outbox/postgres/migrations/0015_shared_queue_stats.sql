-- capirelay PostgreSQL outbox, migration 0015: the queue statistics the gauges show,
-- computed by one replica at a time and shared.
--
-- Queue depth per pixel, events leased, the earliest deadline and the oldest queued
-- event come from a scan of the whole queue.  Every replica ran it every 5 seconds for
-- its gauges and again on every /metrics scrape: N replicas, N scans, at any backlog.
-- After an outage (a backlog of 100 million events is a day of a large deployment's
-- traffic) a scan takes tens of seconds, and the replicas' scans would fill the
-- database's cores just while it must drain the backlog.
--
-- Now a replica whose statistics are older than it accepts (the gauges' interval, and
-- ten times what the last scan took, so scans take at most a tenth of one core) takes a
-- transaction-level advisory lock without waiting, scans, and stores the result in the
-- one row of this table; the other replicas read that row.  Callers that need exact
-- figures (the delivery engine's "drained?", doctor) still scan.

CREATE TABLE capirelay_queue_stats (
    id               integer          PRIMARY KEY CHECK (id = 1),
    computed_at      double precision NOT NULL,
    took_seconds     double precision NOT NULL,
    by_pixel         jsonb            NOT NULL,
    oldest_queued_at double precision,
    dlq_by_reason    jsonb            NOT NULL
);
