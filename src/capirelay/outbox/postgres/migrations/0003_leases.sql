-- capirelay PostgreSQL outbox, migration 0003: lease ids, and dedup keys pinned while queued.
--
-- capirelay_queue.lease_id: the random id of the lease call that last handed the row
-- out.  lease_owner names the process; lease_id names one lease, so a worker whose own
-- lease ran out while a batch was still in flight (and whose rows were leased again, by
-- this process or another) cannot settle them twice.  ack, reschedule, release,
-- dead_letter and extend_lease given a lease id touch only rows still carrying it.
--
-- capirelay_dedup.queued: true while an event with this key is in the queue (queued,
-- waiting or leased).  Such a key is never forgotten however old (a breaker can hold
-- events past the 48 h window; a client retry must not queue a second copy meanwhile):
-- neither expire_dedup nor the takeover of an old key at enqueue touches it.  Ack clears
-- it; dead-lettering deletes the key.
-- Adding columns with constant defaults is instant; the UPDATE pins the keys of the
-- events queued right now (one pass over the queue).

ALTER TABLE capirelay_queue ADD COLUMN lease_id text;

ALTER TABLE capirelay_dedup ADD COLUMN queued boolean NOT NULL DEFAULT false;

UPDATE capirelay_dedup AS d SET queued = true
FROM capirelay_queue AS q
WHERE d.pixel_id = q.pixel_id AND d.event_name = q.event_name AND d.event_id = q.event_id;
