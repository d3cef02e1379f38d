-- capirelay PostgreSQL outbox, migration 0014: lease spans bounded by (deadline, id), not
-- by the deadline alone.
--
-- A deadline is event_time + 7 days in whole seconds, so every event of one second has
-- the same deadline: at 20,000 events a second a second's worth is 20 leases of 1,000,
-- each with the span [D, D].  A span of deadlines cannot tell those leases' rows apart,
-- so with ties (any busy pixel) every ready row of the backlog lay "inside the span" and
-- each lease and due-pixel poll checked the rows in flight one by one again, as before
-- 0013 (measured in a drain with two replicas: 6,000 held rows read per lease and per
-- poll, about 5 us of database CPU per delivered event).
--
-- Leases now take rows in (deadline, id) order, the ready index carries the id as its
-- last column, and each lease records the id of its first and last row besides their
-- deadlines: the pairs bound its rows exactly as the deadlines did, ties included.  A
-- lease without ids (NULL: written by a replica still running 0013's code during the
-- upgrade) is bounded by its whole first and last deadline, which is still correct.

ALTER TABLE capirelay_leases
    ADD COLUMN first_id bigint,
    ADD COLUMN last_id bigint;

CREATE INDEX capirelay_queue_ready_by_id ON capirelay_queue (pixel_id, deadline, id)
    WHERE state = 0;
DROP INDEX capirelay_queue_ready;
ALTER INDEX capirelay_queue_ready_by_id RENAME TO capirelay_queue_ready;
