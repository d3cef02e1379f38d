-- capirelay SQLite outbox, schema version 2: lease ids, and dedup keys pinned while queued.
--
-- queue.lease_id: the random id of the lease call that last handed the row out.  The
-- settle statements (ack, reschedule, release, dead-letter) and lease extensions given a
-- lease id touch only rows still carrying it, so a worker whose lease ran out (and whose
-- rows were leased again) cannot settle rows another worker is now sending.
-- It is an integer that always takes 8 bytes: "no lease" is 2^62 (stored in full, where
-- NULL or 0 would take no space) and lease ids are drawn above it.  Leasing a row
-- therefore never makes it longer, so on a full disk the queue can still be leased,
-- delivered and acked away (which is what frees the space).  Rows queued before this
-- step read the default without storing it; their first lease grows them once.
--
-- dedup.queued: 1 while an event with this key is in the queue (queued, waiting or
-- leased).  Such a key is never forgotten however old (an open breaker can hold events
-- past the 48 h window; a client retry must not queue a second copy meanwhile): neither
-- expire_dedup nor the takeover of an old key at enqueue touches it.  Ack clears it;
-- dead-lettering deletes the key.  A flag on the dedup row (0 and 1 take no space)
-- rather than an index on the queue's key: it costs the ack one primary-key update,
-- where an index would cost every enqueue and every ack an index write.

ALTER TABLE queue ADD COLUMN lease_id INTEGER NOT NULL DEFAULT 4611686018427387904;

ALTER TABLE dedup ADD COLUMN queued INTEGER NOT NULL DEFAULT 0;

UPDATE dedup SET queued = 1
WHERE (pixel_id, event_name, event_id) IN (SELECT pixel_id, event_name, event_id FROM queue);
