-- capirelay PostgreSQL outbox, migration 0010: leases in a table of their own.
--
-- Measured (bench/postgres.py, docs/postgres.md "What changed"): the lease rewrote every
-- queue row it handed out (state, available_at, lease_owner, lease_id), a new row
-- version with its payload plus two index entries (primary key and not_ready) per event,
-- about 12 us of the database's CPU per delivered event.  Now a lease is ONE row of
-- capirelay_leases naming the ids it holds; the queue rows are read, not written.
--
-- * A lease of a pixel reads the ready rows in deadline order and leaves out the ids of
--   that pixel's active leases (until > now).  Leases of one pixel take turns on a
--   transaction-scoped advisory lock (class 0x6c656173, key: schema and pixel).  Settles
--   and extensions lock their lease row; a lease row-locks the lapsed leases it may
--   take rows from.  So "who holds this id" is decided by one transaction at a time,
--   and no queue row is locked or written by a lease.
-- * A lease that runs out simply stops leaving its ids out: a crashed replica's events
--   are leased again by anyone.  Until someone does, its holder may still settle or
--   extend them; the lease that takes them removes them from the lapsed lease.
-- * Settles remove their ids from the lease (and the lease when it is empty); a release
--   writes nothing to the queue, a reschedule sets the row's backoff (state 1) as before.
--
-- Queue states are now 0 (ready) and 1 (waiting out a backoff).  Existing leased rows
-- (state 2) become leases of this table under the same lease id and holder, until the
-- same time, and ready rows again; a leased row without a lease id (written before
-- 0003) waits out its old lease as a backoff.  lease_owner and lease_id leave the queue.

CREATE TABLE capirelay_leases (
    lease_id text             PRIMARY KEY,
    pixel_id text             NOT NULL,
    owner    uuid,
    until    double precision NOT NULL,
    ids      bigint[]         NOT NULL
) WITH (
    -- One insert and one delete (or update) per lease: a tiny, churning table.
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 1
);

CREATE INDEX capirelay_leases_by_pixel ON capirelay_leases (pixel_id, until);

INSERT INTO capirelay_leases (lease_id, pixel_id, owner, until, ids)
SELECT lease_id, min(pixel_id), (array_agg(lease_owner))[1], max(available_at),
       array_agg(id ORDER BY id)
FROM capirelay_queue
WHERE state = 2 AND lease_id IS NOT NULL
GROUP BY lease_id;

UPDATE capirelay_queue SET state = 0 WHERE state = 2 AND lease_id IS NOT NULL;

UPDATE capirelay_queue SET state = 1 WHERE state = 2;

ALTER TABLE capirelay_queue DROP COLUMN lease_owner, DROP COLUMN lease_id;
