-- capirelay SQLite outbox: every statement the backend runs, by name.
--
-- capirelay.outbox.sqlite loads this file once (capirelay.outbox._sql) and runs each
-- block by the name on its "-- name:" line.  Parameters are "?" placeholders; every value
-- is bound.  Row-moving statements take their ids as one JSON array through json_each, so
-- acking 1,000 events is one statement, not a thousand.  Tokens in braces are filled once
-- at load time from constants ({attempt_log_limit}: base.ATTEMPT_LOG_LIMIT, {no_lease}:
-- the lease id of a row no lease holds) or per call ({values}: a multi-row VALUES list of
-- a power-of-two size; {where}: a DLQ filter built from fixed column names).

-- name: claim_dedup_keys
-- Claims each key, or takes it over when the remembered one is older than the window AND
-- its event is no longer queued (dedup.queued).  RETURNING names the keys claimed; a key
-- repeated in the call is claimed once (its later row conflicts with the first, whose
-- seen_at is inside the window; pieces run in call order).  One row: (?, ?, ?, ?, 1), its
-- fourth value the claim's clock reading: the window is measured from each row's own
-- reading, so the rows of several requests (each with its own clock) claim in one
-- statement, and RETURNING's seen_at (that reading) tells which of a key's rows claimed it.
INSERT INTO dedup (pixel_id, event_name, event_id, seen_at, queued) VALUES {values}
ON CONFLICT (pixel_id, event_name, event_id) DO UPDATE SET seen_at = excluded.seen_at, queued = 1
WHERE dedup.seen_at <= excluded.seen_at - {dedup_window_seconds} AND dedup.queued = 0
RETURNING pixel_id, event_name, event_id, seen_at

-- name: holds_claim
-- Whether enqueue would find a key taken: the dedup key remembered inside the window or
-- pinned by its queued event (claim_dedup_keys' condition), or the order key in the
-- ledger.  Parameters: pixel_id, event_name, event_id, now, order key (NULL: none).
SELECT EXISTS (SELECT 1 FROM dedup WHERE pixel_id = ? AND event_name = ? AND event_id = ?
                 AND (seen_at > ? - {dedup_window_seconds} OR queued = 1))
    OR EXISTS (SELECT 1 FROM order_ledger WHERE key = ?)

-- name: insert_queued
-- One row: (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?).
INSERT INTO queue (pixel_id, event_name, event_id, payload, event_time, deadline,
                   test_event_code, source, queued_at, state, available_at)
VALUES {values}

-- name: claim_order_keys
-- One row: (?, ?).
INSERT INTO order_ledger (key, seen_at) VALUES {values} ON CONFLICT (key) DO NOTHING RETURNING key

-- name: promote_due
-- Bounded, longest-waiting first: after an outage hundreds of thousands of rows can come
-- due at once, and promoting them all in one lease would hold the writer (and ingest) for
-- seconds.  Promoting at least `limit` rows keeps every lease full while due rows remain.
UPDATE queue SET state = 0
WHERE id IN (
    SELECT id FROM queue INDEXED BY queue_not_ready
    WHERE pixel_id = ? AND state > 0 AND available_at <= ?
    ORDER BY available_at LIMIT ?
)

-- name: lease
UPDATE queue SET state = 2, available_at = ?, lease_id = ?
WHERE id IN (
    SELECT id FROM queue INDEXED BY queue_by_state_deadline
    WHERE pixel_id = ? AND state = 0 ORDER BY deadline LIMIT ?
)
RETURNING id, pixel_id, event_name, event_id, payload, event_time, deadline, attempts,
          test_event_code, queued_at

-- name: reschedule
-- Appends one attempt (JSON) and drops the oldest past the attempt-log limit.
UPDATE queue SET state = 1, available_at = ?, attempts = attempts + 1, lease_id = {no_lease},
                 attempt_log = json_insert(
                     CASE WHEN json_array_length(attempt_log) >= {attempt_log_limit}
                          THEN json_remove(attempt_log, '$[0]') ELSE attempt_log END,
                     '$[#]', json(?))
WHERE id IN (SELECT value FROM json_each(?))

-- name: release
UPDATE queue SET state = 0, lease_id = {no_lease}
WHERE state = 2 AND id IN (SELECT value FROM json_each(?))

-- name: held_ids
-- The ids (as a JSON array) of the rows still carrying a lease id: what a settle call
-- given that lease id may touch.
SELECT json_group_array(id) FROM queue
WHERE id IN (SELECT value FROM json_each(?)) AND lease_id = ?

-- name: extend_lease
-- A heartbeat never shortens a lease.  A row whose lease ran out but that nobody leased
-- since (still this lease id, even if promoted to ready) is taken back.
UPDATE queue SET state = 2, available_at = max(available_at, ?)
WHERE id IN (SELECT value FROM json_each(?)) AND lease_id = ?
RETURNING id

-- name: ack
DELETE FROM queue WHERE id IN (SELECT value FROM json_each(?))

-- name: unpin_dedup_of_queued
-- Delivered: the key stays remembered for the rest of its window, no longer pinned.
UPDATE dedup SET queued = 0 WHERE (pixel_id, event_name, event_id) IN (
    SELECT pixel_id, event_name, event_id FROM queue
    WHERE id IN (SELECT value FROM json_each(?)))

-- name: forget_dedup_of_queued
DELETE FROM dedup WHERE (pixel_id, event_name, event_id) IN (
    SELECT pixel_id, event_name, event_id FROM queue
    WHERE id IN (SELECT value FROM json_each(?)))

-- name: move_to_dlq
-- Parameters: reason, attempt, attempt, attempt, dead_at, ids.
INSERT INTO dead_letters (pixel_id, event_name, event_id, payload, event_time, deadline,
                          test_event_code, source, queued_at, reason, error, attempt_log, dead_at)
SELECT pixel_id, event_name, event_id, payload, event_time, deadline, test_event_code, source,
       queued_at, ?, ?,
       CASE WHEN ? IS NULL THEN attempt_log ELSE json_insert(
           CASE WHEN json_array_length(attempt_log) >= {attempt_log_limit}
                THEN json_remove(attempt_log, '$[0]') ELSE attempt_log END,
           '$[#]', json(?)) END,
       ?
FROM queue WHERE id IN (SELECT value FROM json_each(?))

-- name: order_ledger_cap
-- The seen_at of the newest entry beyond the ledger's cap (entries at or before it go).
SELECT seen_at FROM order_ledger ORDER BY seen_at DESC LIMIT 1 OFFSET ?

-- name: prune_order_ledger
DELETE FROM order_ledger
WHERE key IN (SELECT key FROM order_ledger WHERE seen_at <= ? ORDER BY seen_at LIMIT ?)

-- name: order_ledger_size
SELECT count(*) FROM order_ledger

-- name: requeue_from_dlq
INSERT INTO queue (pixel_id, event_name, event_id, payload, event_time, deadline,
                   test_event_code, source, queued_at, attempts, state, available_at, attempt_log)
SELECT pixel_id, event_name, event_id, payload, event_time, deadline, test_event_code, source,
       ?, 0, 0, ?, attempt_log
FROM dead_letters WHERE id IN (SELECT value FROM json_each(?))

-- name: dlq_keys
SELECT id, pixel_id, event_name, event_id FROM dead_letters
WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id

-- name: dlq_purge_ids
DELETE FROM dead_letters WHERE id IN (SELECT value FROM json_each(?))

-- name: dlq_purge_filter
DELETE FROM dead_letters {where}

-- name: dlq_list
SELECT id, pixel_id, event_name, event_id, payload, event_time, deadline, reason, error,
       attempt_log, test_event_code, queued_at, dead_at
FROM dead_letters {where} ORDER BY dead_at DESC, id DESC LIMIT ? OFFSET ?

-- name: dlq_get
SELECT id, pixel_id, event_name, event_id, payload, event_time, deadline, reason, error,
       attempt_log, test_event_code, queued_at, dead_at
FROM dead_letters WHERE id = ?

-- name: expire_dedup_last
-- The last key of the next chunk of expire_dedup (same parameters, then the chunk's size
-- minus one), where the chunk after it starts; none when the chunk is the last.
-- (Cheaper than RETURNING every deleted key: measured, the expiry took 0.29 s for
-- 100,000 keys this way and 0.46 s with RETURNING, against 0.24 s for the delete alone.)
SELECT seen_at, pixel_id, event_name, event_id FROM dedup INDEXED BY dedup_by_seen_at
WHERE seen_at <= ? AND (seen_at, pixel_id, event_name, event_id) > (?, ?, ?, ?)
  AND queued = 0
ORDER BY seen_at, pixel_id, event_name, event_id
LIMIT 1 OFFSET ?

-- name: expire_dedup
-- A chunk of keys older than the window (cutoff, then the last key of the chunk before,
-- then the chunk's size), in the seen_at index's order (its entries end with the
-- primary key).  A key whose event is still queued (or leased) is kept however old:
-- forgetting it would let a client retry queue a second copy while the first still
-- waits for delivery.  Starting after the chunk before's last key passes those pinned
-- keys, the oldest of all, once per expiry instead of once per chunk
-- (bench/dedup_expiry.py).
DELETE FROM dedup WHERE (pixel_id, event_name, event_id) IN (
    SELECT pixel_id, event_name, event_id FROM dedup INDEXED BY dedup_by_seen_at
    WHERE seen_at <= ? AND (seen_at, pixel_id, event_name, event_id) > (?, ?, ?, ?)
      AND queued = 0
    ORDER BY seen_at, pixel_id, event_name, event_id
    LIMIT ?)

-- name: next_pixel
-- Distinct pixels by skipping through the index: O(pixels · log rows), never a full scan.
SELECT pixel_id FROM queue INDEXED BY queue_by_state_deadline
WHERE pixel_id > ? ORDER BY pixel_id LIMIT 1

-- name: pixel_ready
SELECT 1 FROM queue WHERE pixel_id = ? AND state = 0 LIMIT 1

-- name: pixel_waiting_due
SELECT 1 FROM queue INDEXED BY queue_not_ready
WHERE pixel_id = ? AND state > 0 AND available_at <= ? LIMIT 1

-- name: pixel_ready_queued_at
-- A ready row is due already; its queued_at is a moment at or before "now".
SELECT queued_at FROM queue WHERE pixel_id = ? AND state = 0 LIMIT 1

-- name: pixel_not_ready_next
SELECT min(available_at) FROM queue INDEXED BY queue_not_ready WHERE pixel_id = ? AND state > 0

-- name: oldest_queued_at
-- Rows are inserted in time order, so the lowest id is the oldest queued row.
SELECT queued_at FROM queue ORDER BY id LIMIT 1

-- name: dlq_by_reason
SELECT reason, count(*) FROM dead_letters GROUP BY reason

-- name: pixel_depth
SELECT count(*) FROM queue WHERE pixel_id = ?

-- name: pixel_leased
SELECT count(*) FROM queue WHERE pixel_id = ? AND state = 2

-- name: pixel_min_deadline
-- Per state, so that each lookup uses the (pixel_id, state, deadline) index.
SELECT min(deadline) FROM queue WHERE pixel_id = ? AND state = ?

-- name: queue_breakdown
-- Dashboard aggregates: full scans, run on page views only (never on the hot path).
SELECT pixel_id, event_name, count(*), min(queued_at), min(deadline)
FROM queue GROUP BY pixel_id, event_name ORDER BY pixel_id, event_name

-- name: dlq_breakdown
-- With a single max() aggregate SQLite takes the bare columns (message, fbtrace_id)
-- from the row holding the maximum: the group's most recent letter.
SELECT pixel_id, event_name, reason, json_extract(error, '$.code') AS code,
       json_extract(error, '$.subcode') AS subcode, count(*) AS n, max(dead_at),
       json_extract(error, '$.message'), json_extract(error, '$.user_title'),
       json_extract(error, '$.user_msg'), json_extract(error, '$.fbtrace_id')
FROM dead_letters GROUP BY pixel_id, event_name, reason, code, subcode
ORDER BY n DESC

-- name: queue_sample
SELECT id, pixel_id, event_name, event_id, payload, event_time, deadline, attempts,
       test_event_code, queued_at
FROM queue ORDER BY id DESC LIMIT ?

-- name: forget_expired_revocations
DELETE FROM revoked_sessions WHERE expires_at <= ?

-- name: revoke_session
INSERT OR REPLACE INTO revoked_sessions (session_hash, expires_at) VALUES (?, ?)

-- name: session_revoked
SELECT 1 FROM revoked_sessions WHERE session_hash = ?

-- name: record_audit
INSERT INTO operator_audit (at, actor, action, target, count, origin) VALUES (?, ?, ?, ?, ?, ?)

-- name: audit_log
SELECT id, at, actor, action, target, count, origin FROM operator_audit
ORDER BY id DESC LIMIT ?

-- name: ping
SELECT 1

-- ------------------------------------------------------------------ receipts (receipts.py)

-- name: insert_receipt
INSERT INTO receipts (pixel_id, event_name, event_id, outcome, source, recorded_at, received_at,
                      first_attempt_at, last_attempt_at, attempts, fbtrace_id, events_received,
                      test_event_code, reason, problems, attempt_log, order_key, identity, count)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: bump_duplicate_receipt
UPDATE receipts SET count = count + 1, last_attempt_at = ?
WHERE id = (SELECT id FROM receipts WHERE event_id = ? AND pixel_id = ? AND event_name = ?
            AND outcome = 'duplicate' ORDER BY id DESC LIMIT 1)

-- name: settling_rows
-- What the receipts of queue rows about to be acked or dead-lettered need.
SELECT pixel_id, event_name, event_id, source, queued_at, attempts, attempt_log,
       test_event_code, payload
FROM queue WHERE id IN (SELECT value FROM json_each(?))

-- name: receipts_of
SELECT id, pixel_id, event_name, event_id, outcome, source, recorded_at, received_at,
       first_attempt_at, last_attempt_at, attempts, fbtrace_id, events_received,
       test_event_code, reason, problems, attempt_log, order_key, identity, count
FROM receipts WHERE event_id = ? ORDER BY id

-- name: queued_of
SELECT pixel_id, event_name, event_id, source, queued_at, attempts, attempt_log,
       test_event_code, state, available_at
FROM queue WHERE event_id IN (?, ?) ORDER BY id  -- as sent, and unverified (orders.py)

-- name: letters_of
SELECT pixel_id, event_name, event_id, source, queued_at, attempt_log, test_event_code,
       reason, dead_at
FROM dead_letters WHERE event_id IN (?, ?) ORDER BY id

-- name: event_ids_of_order
SELECT event_id FROM receipts WHERE order_key = ? AND (? IS NULL OR pixel_id = ?)
GROUP BY event_id ORDER BY max(id) DESC LIMIT ?

-- name: prune_old_receipts
DELETE FROM receipts WHERE id IN (
    SELECT id FROM receipts WHERE recorded_at < ? ORDER BY recorded_at LIMIT ?)

-- name: prune_receipts_over_cap
DELETE FROM receipts WHERE id IN (
    SELECT id FROM receipts WHERE id <= (SELECT max(id) FROM receipts) - ? ORDER BY id LIMIT ?)

-- name: receipt_count
SELECT count(*) FROM receipts

-- name: erase_candidates_queue
-- Rows whose payload holds a digest; the caller checks the field it sits in.
SELECT id, pixel_id, payload FROM queue WHERE instr(payload, ?) > 0

-- name: erase_candidates_dead_letters
SELECT id, pixel_id, payload FROM dead_letters WHERE instr(payload, ?) > 0

-- name: erase_candidates_receipts
SELECT id, pixel_id, identity FROM receipts WHERE instr(identity, ?) > 0

-- name: delete_receipts_ids
DELETE FROM receipts WHERE id IN (SELECT value FROM json_each(?))

-- name: insert_erasure
INSERT INTO erasures (requested_at, field, value_sha256, pixel_id, queued, dead_letters, receipts)
VALUES (?, ?, ?, ?, ?, ?, ?)

-- name: erasure_log
SELECT requested_at, field, value_sha256, pixel_id, queued, dead_letters, receipts
FROM erasures ORDER BY id DESC LIMIT ?
