-- capirelay PostgreSQL outbox, migration 0013: each lease records the deadline span of
-- the rows it took, so a lease skips the rows other leases hold only where it must.
--
-- Measured (docs/postgres.md "Seventh step"): a lease read the ready rows of its pixel in
-- deadline order and left out, one by one, the ids the pixel's active leases hold; each
-- held row it passed cost a heap visit, about 0.8 ms per 1,000 held, on top of 4.4 ms
-- for the 1,000 it took.  With two replicas, four batches in flight each, a lease passed
-- about 7,000 held rows: half its cost, and the database CPU that made a second replica
-- drain a pixel no faster than one.
--
-- A lease's ids only ever shrink (settles, retakes), and a queue row's deadline never
-- changes, so [first_deadline, last_deadline] of the rows a lease took bounds the rows
-- it holds for as long as it lives.  A ready row with a deadline outside every active
-- lease's span is held by none of them: the lease reads it with no check at all.
-- NULL (a lease written before this migration, or by a replica still running the
-- version before it) means "anywhere": such a lease makes every lease of its pixel
-- check every row, as before.

ALTER TABLE capirelay_leases
    ADD COLUMN first_deadline double precision,
    ADD COLUMN last_deadline double precision;

UPDATE capirelay_leases AS l
SET first_deadline = span.lo, last_deadline = span.hi
FROM (
    SELECT l2.lease_id, min(q.deadline) AS lo, max(q.deadline) AS hi
    FROM capirelay_leases AS l2 JOIN capirelay_queue AS q ON q.id = ANY(l2.ids)
    GROUP BY l2.lease_id
) AS span
WHERE span.lease_id = l.lease_id;
