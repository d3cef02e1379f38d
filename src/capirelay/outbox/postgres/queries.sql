-- capirelay PostgreSQL outbox: every statement the backend runs, by name.
--
-- capirelay.outbox.postgres loads this file once and runs each block by the name on its
-- "-- name:" line.  Parameters are psycopg named placeholders; every value is bound,
-- nothing is formatted into the text.  Row-moving statements take their ids as one
-- bigint[] so that acking 1,000 events is one statement, not a thousand.

-- name: enqueue
-- The order-ledger claim, dedup and queue of one request (or one coalesced group) in ONE
-- statement, run on its own (autocommit): one round trip and one implicit transaction,
-- durably committed before the client reads the answer, whatever the request's size.
-- `order_keys` holds the order keys of the events sent, once each, sorted: all of the
-- request's (the caller sends a request whose dedup keys repeat around an order event
-- as two statements instead, see postgres/_enqueue.py); `event_order_keys` each event's
-- key (NULL for an event without one).  The ledger insert runs first (`input`
-- reads what it returned before any dedup key is claimed) and claims the keys in key
-- order; an event whose key it did not claim (an order already sent) is not queued.
-- The caller sends each order key's first event only, and each dedup key once among
-- the events it sends (its first occurrence), as parallel arrays in request order
-- (unnest ... WITH ORDINALITY keeps it), with `ranks`: each event's place in key order.
-- Every event gets its queue row's id up front (nextval, in request order, for the
-- events the ledger lets through).  The dedup insert claims each key with that id (the
-- key stays pinned while the row exists), or takes over a key older than the 48 h
-- window whose queue row is gone; a key it could not claim is a duplicate.  Across
-- replicas the primary keys of capirelay_order_ledger and capirelay_dedup do the
-- arbitration: a concurrent insert of the same key waits for the first transaction and
-- then sees its row, so exactly one of them queues the event.  Keys are inserted in key
-- order (ledger keys sorted, dedup keys by rank: an integer sort) so that two requests
-- sharing keys lock them in the same order and cannot deadlock.  The queued rows'
-- pixels are announced with pg_notify, which PostgreSQL delivers at COMMIT (never for a
-- rolled-back request).
-- This block is two statements (postgres/_statements.py): `enqueue` is it without the
-- lines marked "fresh", `enqueue_fresh` without the lines marked "arbitrates".  The
-- fresh one is for a group whose keys are all new: plain inserts (`ON CONFLICT` makes
-- PostgreSQL probe each unique index before the insert and then confirm the row, a
-- speculative insertion, about 2 us of the database's CPU per key measured; a plain
-- insert checks the key while inserting it), and since every event it lets through is
-- queued, it answers only how many were (no join back to each event's place); its queue
-- insert reads the count of `claimed`, because PostgreSQL runs a data-modifying CTE that
-- nothing reads after the rest: the claims must come first (the same lock order as
-- `enqueue`, and nothing written to the queue by a statement that will fail).  A key
-- that exists after all (a duplicate, a key past the window to take over, one a
-- concurrent transaction committed) fails the whole statement with a unique
-- violation, which changes nothing, and the caller sends `enqueue` instead
-- (postgres/_enqueue.py, FreshClaims).
WITH ledger AS (
    INSERT INTO capirelay_order_ledger (key, seen_at)
    SELECT k, %(now)s FROM unnest(%(order_keys)b::bytea[]) AS k ORDER BY k
    ON CONFLICT (key) DO NOTHING  -- arbitrates
    RETURNING key
),
input AS (
    SELECT nextval('capirelay_queue_id_seq') AS id, t.*
    FROM unnest(%(ranks)b::int[], %(pixel_ids)b::text[], %(event_names)b::text[],
                %(event_ids)b::text[], %(payloads)b::bytea[], %(event_times)b::bigint[],
                %(deadlines)b::float8[], %(test_event_codes)b::text[], %(sources)b::text[],
                %(event_order_keys)b::bytea[])
         WITH ORDINALITY AS t (rank, pixel_id, event_name, event_id, payload, event_time,
                               deadline, test_event_code, source, order_key, ord)
    WHERE t.order_key IS NULL OR t.order_key IN (SELECT key FROM ledger)
),
claimed AS (
    INSERT INTO capirelay_dedup AS d (event_id, event_name, pixel_id, seen_at, queue_id)
    SELECT event_id, event_name, pixel_id, %(now)s, id FROM input
    ORDER BY rank
    ON CONFLICT (event_id, event_name, pixel_id)  -- arbitrates
        DO UPDATE SET seen_at = excluded.seen_at, queue_id = excluded.queue_id  -- arbitrates
        WHERE d.seen_at <= %(cutoff)s  -- arbitrates
          AND NOT EXISTS (SELECT 1 FROM capirelay_queue AS q WHERE q.id = d.queue_id)  -- arbitrates
    RETURNING queue_id
),
queued AS (
    INSERT INTO capirelay_queue (id, pixel_id, event_name, event_id, payload, event_time,
                                 deadline, test_event_code, source, queued_at, state,
                                 available_at)
    OVERRIDING SYSTEM VALUE
    SELECT i.id, i.pixel_id, i.event_name, i.event_id, i.payload, i.event_time, i.deadline,
           i.test_event_code, i.source, %(now)s, 0, %(now)s
    FROM input AS i WHERE i.id IN (SELECT queue_id FROM claimed)  -- arbitrates
    FROM input AS i CROSS JOIN (SELECT count(*) FROM claimed) AS c  -- fresh
    ORDER BY i.id
    RETURNING id, pixel_id
),
announced AS (
    SELECT count(pg_notify(%(channel)s, pixel_id)) AS pixels
    FROM (SELECT DISTINCT pixel_id FROM queued) AS p
)
SELECT i.ord, announced.pixels  -- arbitrates
FROM input AS i JOIN queued USING (id) CROSS JOIN announced  -- arbitrates
SELECT (SELECT count(*) FROM queued), announced.pixels FROM announced  -- fresh
;

-- name: holds_claim
-- Whether enqueue would find a key taken: the dedup key remembered inside the window or
-- held by its queue row (enqueue's takeover condition), or the order key in the ledger.
SELECT EXISTS (SELECT 1 FROM capirelay_dedup AS d
               WHERE d.event_id = %(event_id)s AND d.event_name = %(event_name)s
                 AND d.pixel_id = %(pixel_id)s
                 AND (d.seen_at > %(cutoff)s
                      OR EXISTS (SELECT 1 FROM capirelay_queue AS q WHERE q.id = d.queue_id)))
    OR EXISTS (SELECT 1 FROM capirelay_order_ledger WHERE key = %(order_key)s::bytea);

-- name: promote_due
-- Rows whose backoff ended become ready again, longest-waiting first and bounded: after
-- an outage hundreds of thousands of rows come due at once, and promoting them all in
-- one lease would hold row locks for seconds.  Promoting a multiple of the lease size
-- keeps every lease full.  (A lease that ran out needs no promotion: its rows stayed
-- ready, see `lease`.)  Runs under the pixel's lease lock (`lock_pixel`); SKIP LOCKED
-- passes over rows a settle is moving right now.
UPDATE capirelay_queue SET state = 0
WHERE id IN (
    SELECT id FROM capirelay_queue
    WHERE pixel_id = %(pixel_id)s AND state > 0 AND available_at <= %(now)s
    ORDER BY available_at
    LIMIT %(promote)s
    FOR UPDATE SKIP LOCKED
);

-- name: lock_pixel
-- The lease lock of one pixel (migration 0010), held until the transaction ends: leases
-- of a pixel take turns on it, so no two of them read the same free rows (the rows are
-- not written, so there is no row lock to skip).  Per schema: two schemas of one
-- database do not wait for each other.  Settles do not take it (see `lock_lease`).
-- It also fixes the plans of the statements that follow it in the lease's transaction
-- (`promote_due`, `lease`): no bitmap or sequential scan.  Their fast plan walks a
-- partial index in deadline (or available_at) order and stops after `limit` rows, and
-- it is the right plan whatever the backlog.  The planner only picks another one on
-- stale statistics: a backlog that built up since autovacuum last analyzed the queue
-- (an outage, an import) looks like a few rows, and a bitmap scan then reads and sorts
-- every ready row of the pixel for each lease (measured: 100,000 rows, 76 ms a lease,
-- just when a backlog is being drained).  `set_config(..., true)` ends with the
-- transaction.
SELECT pg_advisory_xact_lock(1818583411, hashtext(current_schema() || ' ' || %(pixel_id)s)),
       set_config('enable_bitmapscan', 'off', true),
       set_config('enable_seqscan', 'off', true);

-- name: lock_lapsed_leases
-- After `lock_pixel`, before `lease`: the pixel's leases that ran out (the only ones a
-- lease may take rows from), row-locked until the transaction ends.  A settle or an
-- extension of such a lease that started first (it locks its lease row, `lock_lease`)
-- is waited for, so the lease's own snapshot then sees what it did; one that starts
-- later waits for the lease and then sees which ids were taken from it.
SELECT 1 FROM capirelay_leases
WHERE pixel_id = %(pixel_id)s AND until <= %(now)s
FOR UPDATE;

-- name: lock_lease
-- A settle's or an extension's first step: its lease row, locked until the transaction
-- ends (nothing when no such lease exists: the settle then finds nothing held).  A lease
-- taking rows from this lease (it ran out) waits for it, or it for that lease.  Settles
-- of different leases never wait for each other.
SELECT 1 FROM capirelay_leases WHERE lease_id = %(lease_id)s FOR UPDATE;

-- name: lease
-- Lease up to `limit` ready rows of one pixel, earliest deadline first (ties by id),
-- straight off the partial index capirelay_queue_ready, leaving out the ids the pixel's
-- active leases hold.  The rows are read, not written: the lease is ONE row of
-- capirelay_leases (migration 0010) naming them, until `lease_until`, with the span of
-- what it took (0013, 0014).  Runs after `lock_pixel` and `lock_lapsed_leases` in the same
-- transaction, so no other lease of the pixel runs meanwhile, and no settle of a lease
-- it may take rows from.  Settles of active leases may run: their rows are left out
-- whatever they do to them.  A lease that ran out no longer leaves its ids out; taking
-- one of them removes it from that lapsed lease (its old holder cannot settle it any
-- more), and `sweep_leases` then drops lapsed leases that hold nothing.
--
-- Where it reads (0013, 0014): a lease's span runs from its first row's (deadline, id)
-- to its last row's, and the active leases' ids all lie inside [lo, hi], the union of
-- their spans.  The id breaks ties: a deadline is event_time + 7 days in whole seconds,
-- so a busy pixel's leases share deadlines, and spans of deadlines alone would cover
-- the whole backlog.  Ready rows below lo or above hi are held by none of them and are
-- read with no check; inside the span each row is checked against the held ids (a
-- hashed NOT IN, a heap visit per held row passed).  The parts, in order, until `limit`:
--   1. below the span: the earliest deadlines of all (two index scans: deadlines below
--      lo's, then lo's deadline with ids below lo's.  One row comparison would do, but
--      as an upper bound a B-tree scan stops on its first column only, and would read
--      every row of lo's deadline: with ties, the whole second's backlog);
--   2. inside the span, due before `urgent_before`: rows given back or retried while
--      other leases are in flight, whose deadline is close (strict EDF where it counts);
--   3. above the span;
--   4. inside the span, the rest.
-- So a row given back in the middle of other leases' span waits until those leases
-- settle (a batch's round trip; `lease_seconds` if their holder died), or until parts 1
-- and 3 are empty, or until its deadline is within `urgent_before`: whichever is first.
-- A lease with no recorded span (NULL: written before 0013) spans everything, so every
-- row is checked, as before 0013; one with deadlines but no ids (written by 0013's code)
-- spans its whole first and last deadlines.
-- Holds (capirelay_pixel_state): while one is running, no replica leases the pixel.
-- When a 'breaker' hold has run out, exactly one replica gets to send the next batch
-- (the probe): `probe` re-arms the hold, and the row lock it takes makes concurrent
-- leasers wait, re-check hold_until on the re-armed row and find nothing to claim.
WITH probe AS (
    UPDATE capirelay_pixel_state
    SET hold_until = %(now)s + hold_seconds, updated_at = %(now)s
    WHERE pixel_id = %(pixel_id)s AND reason = 'breaker' AND hold_until <= %(now)s
    RETURNING pixel_id
),
gate AS (
    SELECT 1 AS open
    WHERE NOT EXISTS (
          SELECT 1 FROM capirelay_pixel_state AS s
          WHERE s.pixel_id = %(pixel_id)s AND s.hold_until > %(now)s
      )
      AND (
          EXISTS (SELECT 1 FROM probe)
          OR NOT EXISTS (
              SELECT 1 FROM capirelay_pixel_state AS s
              WHERE s.pixel_id = %(pixel_id)s AND s.reason = 'breaker'
          )
      )
),
active AS (
    SELECT ids, COALESCE(first_deadline, '-Infinity') AS first_deadline,
           COALESCE(first_id, -9223372036854775807) AS first_id,
           COALESCE(last_deadline, 'Infinity') AS last_deadline,
           COALESCE(last_id, 9223372036854775807) AS last_id
    FROM capirelay_leases
    WHERE pixel_id = %(pixel_id)s AND until > %(now)s
),
span AS (
    -- No active lease: an empty span above every deadline (part 1 reads everything).
    SELECT COALESCE(lo.d, 'Infinity') AS lo_d, COALESCE(lo.i, -9223372036854775807) AS lo_i,
           COALESCE(hi.d, 'Infinity') AS hi_d, COALESCE(hi.i, 9223372036854775807) AS hi_i
    FROM (SELECT 1) AS one
    LEFT JOIN (SELECT first_deadline AS d, first_id AS i FROM active
               ORDER BY first_deadline, first_id LIMIT 1) AS lo ON true
    LEFT JOIN (SELECT last_deadline AS d, last_id AS i FROM active
               ORDER BY last_deadline DESC, last_id DESC LIMIT 1) AS hi ON true
),
held AS (
    SELECT unnest(ids) AS id FROM active
),
picked AS (
    -- Scalar subqueries, not a join with `span`: each part is then an index range scan
    -- in (deadline, id) order that stops at `limit`, and a part that is not reached (the
    -- Append stops when the LIMIT is met) is never read, `held` never hashed.
    SELECT * FROM (
        (SELECT id, pixel_id, event_name, event_id, payload, event_time, deadline, attempts,
                test_event_code, queued_at
         FROM capirelay_queue
         WHERE pixel_id = %(pixel_id)s AND state = 0 AND EXISTS (SELECT 1 FROM gate)
           AND deadline < (SELECT lo_d FROM span)
         ORDER BY deadline, id
         LIMIT %(limit)s)
        UNION ALL
        (SELECT id, pixel_id, event_name, event_id, payload, event_time, deadline, attempts,
                test_event_code, queued_at
         FROM capirelay_queue
         WHERE pixel_id = %(pixel_id)s AND state = 0 AND EXISTS (SELECT 1 FROM gate)
           AND deadline = (SELECT lo_d FROM span) AND id < (SELECT lo_i FROM span)
         ORDER BY deadline, id
         LIMIT %(limit)s)
        UNION ALL
        (SELECT id, pixel_id, event_name, event_id, payload, event_time, deadline, attempts,
                test_event_code, queued_at
         FROM capirelay_queue
         WHERE pixel_id = %(pixel_id)s AND state = 0 AND EXISTS (SELECT 1 FROM gate)
           AND (deadline, id) >= ((SELECT lo_d FROM span), (SELECT lo_i FROM span))
           AND (deadline, id) <= ((SELECT hi_d FROM span), (SELECT hi_i FROM span))
           AND deadline < %(urgent_before)s
           AND id NOT IN (SELECT id FROM held)
         ORDER BY deadline, id
         LIMIT %(limit)s)
        UNION ALL
        (SELECT id, pixel_id, event_name, event_id, payload, event_time, deadline, attempts,
                test_event_code, queued_at
         FROM capirelay_queue
         WHERE pixel_id = %(pixel_id)s AND state = 0 AND EXISTS (SELECT 1 FROM gate)
           AND (deadline, id) > ((SELECT hi_d FROM span), (SELECT hi_i FROM span))
         ORDER BY deadline, id
         LIMIT %(limit)s)
        UNION ALL
        (SELECT id, pixel_id, event_name, event_id, payload, event_time, deadline, attempts,
                test_event_code, queued_at
         FROM capirelay_queue
         WHERE pixel_id = %(pixel_id)s AND state = 0 AND EXISTS (SELECT 1 FROM gate)
           AND (deadline, id) >= ((SELECT lo_d FROM span), (SELECT lo_i FROM span))
           AND (deadline, id) <= ((SELECT hi_d FROM span), (SELECT hi_i FROM span))
           AND deadline >= %(urgent_before)s
           AND id NOT IN (SELECT id FROM held)
         ORDER BY deadline, id
         LIMIT %(limit)s)
    ) AS parts
    LIMIT %(limit)s
),
bounds AS (
    SELECT array_agg(id ORDER BY id) AS ids, min(deadline) AS first_deadline,
           max(deadline) AS last_deadline
    FROM picked
),
taken AS (
    -- The span's ends: the lowest id of the first deadline, the highest of the last (a
    -- filtered pass each, no sort).
    SELECT b.ids, b.first_deadline, b.last_deadline,
           (SELECT min(p.id) FROM picked AS p WHERE p.deadline = b.first_deadline) AS first_id,
           (SELECT max(p.id) FROM picked AS p WHERE p.deadline = b.last_deadline) AS last_id
    FROM bounds AS b
),
retaken AS (
    UPDATE capirelay_leases AS l
    SET ids = ARRAY(SELECT x FROM (SELECT unnest(l.ids) EXCEPT SELECT unnest(t.ids)) AS r (x)
                    ORDER BY x)
    FROM taken AS t
    WHERE l.pixel_id = %(pixel_id)s AND l.until <= %(now)s AND l.ids && t.ids
),
granted AS (
    INSERT INTO capirelay_leases (lease_id, pixel_id, owner, until, ids, first_deadline,
                                  last_deadline, first_id, last_id)
    SELECT %(lease_id)s, %(pixel_id)s, %(owner)s, %(lease_until)s, t.ids, t.first_deadline,
           t.last_deadline, t.first_id, t.last_id
    FROM taken AS t WHERE t.ids IS NOT NULL
)
SELECT id, pixel_id, event_name, event_id, payload, event_time, deadline, attempts,
       test_event_code, queued_at
FROM picked;

-- name: sweep_leases
-- After a lease, in its transaction: lapsed leases of the pixel whose rows are all gone
-- (settled, erased, taken by another lease) are dropped.  A probe of the (pixel, until)
-- index when there are none.
DELETE FROM capirelay_leases AS l
WHERE l.pixel_id = %(pixel_id)s AND l.until <= %(now)s
  AND NOT EXISTS (SELECT 1 FROM capirelay_queue AS q WHERE q.id = ANY(l.ids));

-- name: unlease
-- After a settle, in its transaction (under `lock_lease`): the settled ids leave their
-- lease, and a lease holding nothing more goes.
-- Lease ids are kept in ascending order and callers send theirs sorted, so settling a
-- whole lease (the usual ack) is one array comparison; only a partial settle computes
-- what is left.
WITH lease AS (
    SELECT l.lease_id,
           CASE WHEN l.ids = %(ids)b::bigint[] THEN '{}'::bigint[]
                ELSE ARRAY(SELECT x FROM (SELECT unnest(l.ids) EXCEPT
                                          SELECT unnest(%(ids)b::bigint[])) AS r (x)
                           ORDER BY x)
           END AS rest
    FROM capirelay_leases AS l WHERE l.lease_id = %(lease_id)s
),
shrunk AS (
    UPDATE capirelay_leases AS l SET ids = lease.rest
    FROM lease
    WHERE l.lease_id = lease.lease_id AND cardinality(lease.rest) > 0
)
DELETE FROM capirelay_leases AS l
USING lease
WHERE l.lease_id = lease.lease_id AND cardinality(lease.rest) = 0;
-- name: ack
-- Delivered: the rows go.  Deleting (not flagging) keeps the live table as small as
-- the backlog; autovacuum (per-table settings in 0001) reclaims the dead tuples.
-- Only rows still held under the lease (one that ran out and was taken by someone else
-- is theirs to settle); run under `lock_lease`, followed by `unlease`.  Their dedup
-- keys stay for the rest of the window, unpinned by the deletion itself (a key is
-- pinned while its queue_id's row exists): the ack writes nothing else per event.
-- Meta accepting a pixel's events proves its token works: a breaker hold on it (written
-- by any replica) is lifted, so every replica resumes at once.
WITH acked AS (
    DELETE FROM capirelay_queue
    WHERE id = ANY(ARRAY(SELECT unnest(ids) FROM capirelay_leases WHERE lease_id = %(lease_id)s
                         INTERSECT SELECT unnest(%(ids)b::bigint[])))
    RETURNING pixel_id
)
DELETE FROM capirelay_pixel_state
WHERE reason = 'breaker' AND pixel_id IN (SELECT DISTINCT pixel_id FROM acked);

-- name: reschedule
-- A failed attempt: count it, append it to the bounded attempt log, wait until
-- next_attempt_at.  Only rows still held under the lease (under `lock_lease`, followed
-- by `unlease`).
UPDATE capirelay_queue
SET state = 1,
    available_at = %(next_attempt_at)s,
    attempts = attempts + 1,
    attempt_log = (CASE WHEN jsonb_array_length(attempt_log) >= %(log_limit)s
                        THEN attempt_log - 0 ELSE attempt_log END)
                  || jsonb_build_array(%(attempt)s::jsonb)
WHERE id = ANY(ARRAY(SELECT unnest(ids) FROM capirelay_leases WHERE lease_id = %(lease_id)s
                     INTERSECT SELECT unnest(%(ids)b::bigint[])));

-- name: extend_lease
-- Heartbeat for a batch still in flight: the lease now ends at `until` (never earlier
-- than it did), including a lease that ran out but whose rows nobody leased since (taken
-- back).  Run under `lock_lease`.  The lease is one row: all its unsettled ids are
-- extended together (a worker extends its whole batch).  The asked-for ids it holds,
-- and that are still queued, come back.
WITH extended AS (
    UPDATE capirelay_leases
    SET until = GREATEST(until, %(until)s), owner = %(owner)s
    WHERE lease_id = %(lease_id)s
    RETURNING ids
)
SELECT q.id FROM capirelay_queue AS q
WHERE q.id = ANY(ARRAY(SELECT unnest(ids) FROM extended
                       INTERSECT SELECT unnest(%(ids)b::bigint[])));

-- name: dead_letter
-- Move rows to the dead-letter store and forget their dedup keys, in one statement:
-- the data-modifying CTEs run exactly once each, all or nothing.
-- Only rows still held under the lease (under `lock_lease`, followed by `unlease`).
WITH moved AS (
    DELETE FROM capirelay_queue
    WHERE id = ANY(ARRAY(SELECT unnest(ids) FROM capirelay_leases WHERE lease_id = %(lease_id)s
                         INTERSECT SELECT unnest(%(ids)b::bigint[])))
    RETURNING *
),
forgotten AS (
    DELETE FROM capirelay_dedup AS d
    USING moved AS m
    WHERE d.pixel_id = m.pixel_id AND d.event_name = m.event_name AND d.event_id = m.event_id
)
INSERT INTO capirelay_dead_letters (pixel_id, event_name, event_id, payload, event_time,
                                    deadline, test_event_code, source, queued_at, reason,
                                    error, attempt_log, dead_at)
SELECT pixel_id, event_name, event_id, payload, event_time, deadline, test_event_code, source,
       queued_at, %(reason)s, %(error)s::jsonb,
       CASE WHEN %(error)s::jsonb IS NULL THEN attempt_log
            ELSE (CASE WHEN jsonb_array_length(attempt_log) >= %(log_limit)s
                       THEN attempt_log - 0 ELSE attempt_log END)
                 || jsonb_build_array(%(error)s::jsonb)
       END,
       %(now)s
FROM moved
ORDER BY id;

-- name: due_pixels
-- Pixels with a due event and no hold: a ready row no active lease holds, or a backoff
-- that ended.  PostgreSQL has no skip scan, so the distinct pixels come from a "loose
-- index scan" (a recursive CTE that jumps from one pixel to the next through each
-- partial index): O(pixels · log rows), never a scan of the queue.  Every replica runs
-- this every `poll_seconds`, while its own and the other replicas' leases are in flight,
-- and the rows they hold are the pixel's earliest deadlines: the first ready rows in
-- index order.  So, as the lease does (0013, 0014), a pixel's check reads around its
-- active leases' span: a ready row below or above it is held by no lease (an index
-- probe each; below is two, see `lease`), and only a pixel whose every ready row lies
-- inside the span has its rows checked against the held ids (hashed once, `held`),
-- which passes its rows in flight.
-- OFFSET 0 keeps each EXISTS a per-pixel subplan that stops at its first row: PostgreSQL
-- would otherwise turn it into a join, and on stale statistics (a backlog that built up
-- since the last ANALYZE looks small) hash every ready row of the queue on each poll of
-- each replica (measured: 32,000 rows, 42 ms a poll).  OR evaluates its arms in order
-- and stops at the first true one.
WITH RECURSIVE ready AS (
    (SELECT pixel_id FROM capirelay_queue WHERE state = 0 ORDER BY pixel_id LIMIT 1)
    UNION ALL
    SELECT (SELECT q.pixel_id FROM capirelay_queue AS q
            WHERE q.state = 0 AND q.pixel_id > r.pixel_id ORDER BY q.pixel_id LIMIT 1)
    FROM ready AS r WHERE r.pixel_id IS NOT NULL
),
not_ready AS (
    (SELECT pixel_id FROM capirelay_queue WHERE state > 0 ORDER BY pixel_id LIMIT 1)
    UNION ALL
    SELECT (SELECT q.pixel_id FROM capirelay_queue AS q
            WHERE q.state > 0 AND q.pixel_id > r.pixel_id ORDER BY q.pixel_id LIMIT 1)
    FROM not_ready AS r WHERE r.pixel_id IS NOT NULL
),
held AS (
    SELECT unnest(ids) AS id FROM capirelay_leases WHERE until > %(now)s
),
candidates AS (
    SELECT r.pixel_id FROM ready AS r
    CROSS JOIN LATERAL (
        -- The pixel's span as in `lease`.  No active lease: an empty span above every
        -- deadline (the first arm finds any ready row).
        SELECT COALESCE(lo.d, 'Infinity') AS lo_d,
               COALESCE(lo.i, -9223372036854775807) AS lo_i,
               COALESCE(hi.d, 'Infinity') AS hi_d, COALESCE(hi.i, 9223372036854775807) AS hi_i
        FROM (SELECT 1) AS one
        LEFT JOIN LATERAL (
            SELECT COALESCE(l.first_deadline, '-Infinity') AS d,
                   COALESCE(l.first_id, -9223372036854775807) AS i
            FROM capirelay_leases AS l WHERE l.pixel_id = r.pixel_id AND l.until > %(now)s
            ORDER BY 1, 2 LIMIT 1
        ) AS lo ON true
        LEFT JOIN LATERAL (
            SELECT COALESCE(l.last_deadline, 'Infinity') AS d,
                   COALESCE(l.last_id, 9223372036854775807) AS i
            FROM capirelay_leases AS l WHERE l.pixel_id = r.pixel_id AND l.until > %(now)s
            ORDER BY 1 DESC, 2 DESC LIMIT 1
        ) AS hi ON true
    ) AS span
    WHERE r.pixel_id IS NOT NULL AND (
        EXISTS (
            SELECT 1 FROM capirelay_queue AS q
            WHERE q.pixel_id = r.pixel_id AND q.state = 0 AND q.deadline < span.lo_d
            OFFSET 0
        )
        OR EXISTS (
            SELECT 1 FROM capirelay_queue AS q
            WHERE q.pixel_id = r.pixel_id AND q.state = 0
              AND q.deadline = span.lo_d AND q.id < span.lo_i
            OFFSET 0
        )
        OR EXISTS (
            SELECT 1 FROM capirelay_queue AS q
            WHERE q.pixel_id = r.pixel_id AND q.state = 0
              AND (q.deadline, q.id) > (span.hi_d, span.hi_i)
            OFFSET 0
        )
        OR EXISTS (
            SELECT 1 FROM capirelay_queue AS q
            WHERE q.pixel_id = r.pixel_id AND q.state = 0
              AND (q.deadline, q.id) >= (span.lo_d, span.lo_i)
              AND (q.deadline, q.id) <= (span.hi_d, span.hi_i)
              AND q.id NOT IN (SELECT id FROM held)
            OFFSET 0
        )
    )
    UNION
    SELECT r.pixel_id FROM not_ready AS r
    WHERE r.pixel_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM capirelay_queue AS q
        WHERE q.pixel_id = r.pixel_id AND q.state > 0 AND q.available_at <= %(now)s
        OFFSET 0
    )
)
SELECT c.pixel_id FROM candidates AS c
WHERE NOT EXISTS (
    SELECT 1 FROM capirelay_pixel_state AS s
    WHERE s.pixel_id = c.pixel_id AND s.hold_until > %(now)s
)
ORDER BY c.pixel_id;

-- name: next_due_at_pixel
-- A ready row no lease holds is due already (its queued_at is a moment at or before
-- "now"); otherwise the earliest backoff or lease end (a lease that ran out ended in the
-- past: its rows are due).  A hold on the pixel postpones it.  The unheld ready row is
-- looked for around the pixel's leases' deadline span, as in `due_pixels` (COALESCE
-- stops at its first non-NULL argument): below it, above it, and only then inside it
-- against the held ids.  Every lease of the pixel counts here, lapsed ones too (their
-- `until` is the answer then).
WITH leases AS (
    SELECT ids, COALESCE(first_deadline, '-Infinity') AS first_deadline,
           COALESCE(first_id, -9223372036854775807) AS first_id,
           COALESCE(last_deadline, 'Infinity') AS last_deadline,
           COALESCE(last_id, 9223372036854775807) AS last_id
    FROM capirelay_leases WHERE pixel_id = %(pixel_id)s
),
span AS (
    SELECT COALESCE(lo.d, 'Infinity') AS lo_d, COALESCE(lo.i, -9223372036854775807) AS lo_i,
           COALESCE(hi.d, 'Infinity') AS hi_d, COALESCE(hi.i, 9223372036854775807) AS hi_i
    FROM (SELECT 1) AS one
    LEFT JOIN (SELECT first_deadline AS d, first_id AS i FROM leases
               ORDER BY first_deadline, first_id LIMIT 1) AS lo ON true
    LEFT JOIN (SELECT last_deadline AS d, last_id AS i FROM leases
               ORDER BY last_deadline DESC, last_id DESC LIMIT 1) AS hi ON true
)
SELECT CASE WHEN due IS NULL THEN NULL ELSE GREATEST(due, hold_until) END
FROM (
    SELECT LEAST(
        COALESCE(
            (SELECT queued_at FROM capirelay_queue
             WHERE pixel_id = %(pixel_id)s AND state = 0 AND deadline < (SELECT lo_d FROM span)
             LIMIT 1),
            (SELECT queued_at FROM capirelay_queue
             WHERE pixel_id = %(pixel_id)s AND state = 0
               AND deadline = (SELECT lo_d FROM span) AND id < (SELECT lo_i FROM span)
             LIMIT 1),
            (SELECT queued_at FROM capirelay_queue
             WHERE pixel_id = %(pixel_id)s AND state = 0
               AND (deadline, id) > ((SELECT hi_d FROM span), (SELECT hi_i FROM span))
             LIMIT 1),
            (SELECT queued_at FROM capirelay_queue
             WHERE pixel_id = %(pixel_id)s AND state = 0
               AND (deadline, id) >= ((SELECT lo_d FROM span), (SELECT lo_i FROM span))
               AND (deadline, id) <= ((SELECT hi_d FROM span), (SELECT hi_i FROM span))
               AND id NOT IN (SELECT unnest(ids) FROM leases)
             LIMIT 1)
        ),
        (SELECT min(available_at) FROM capirelay_queue
         WHERE pixel_id = %(pixel_id)s AND state > 0),
        (SELECT min(until) FROM capirelay_leases WHERE pixel_id = %(pixel_id)s)
    ) AS due,
    (SELECT hold_until FROM capirelay_pixel_state WHERE pixel_id = %(pixel_id)s) AS hold_until
) AS t;

-- name: next_due_at_any
SELECT LEAST(
    (SELECT queued_at FROM capirelay_queue
     WHERE state = 0 AND id NOT IN (SELECT unnest(ids) FROM capirelay_leases) LIMIT 1),
    (SELECT min(available_at) FROM capirelay_queue WHERE state > 0),
    (SELECT min(until) FROM capirelay_leases)
);

-- name: stats_by_pixel
-- Leased: the rows a lease holds (one that ran out included, until someone takes them).
SELECT pixel_id, count(*),
       count(*) FILTER (WHERE id IN (SELECT unnest(ids) FROM capirelay_leases)),
       min(deadline)
FROM capirelay_queue
GROUP BY pixel_id;

-- name: shared_stats
-- The statistics a replica stored last (migration 0015), if any.
SELECT computed_at, took_seconds, by_pixel, oldest_queued_at, dlq_by_reason
FROM capirelay_queue_stats WHERE id = 1;

-- name: stats_turn
-- Whether this transaction may compute the shared statistics: one replica at a time, and
-- the others do not wait (they read what is stored).  Per schema, like the lease lock.
SELECT pg_try_advisory_xact_lock(1818583412, hashtext(current_schema() || ' queue stats'));

-- name: store_stats
INSERT INTO capirelay_queue_stats AS s
    (id, computed_at, took_seconds, by_pixel, oldest_queued_at, dlq_by_reason)
VALUES (1, %(computed_at)s, %(took_seconds)s, %(by_pixel)s::jsonb, %(oldest_queued_at)s,
        %(dlq_by_reason)s::jsonb)
ON CONFLICT (id) DO UPDATE
SET computed_at = excluded.computed_at, took_seconds = excluded.took_seconds,
    by_pixel = excluded.by_pixel, oldest_queued_at = excluded.oldest_queued_at,
    dlq_by_reason = excluded.dlq_by_reason;

-- name: oldest_queued_at
-- Rows are inserted in time order, so the lowest id is the oldest queued row.
SELECT queued_at FROM capirelay_queue ORDER BY id LIMIT 1;

-- name: dlq_by_reason
SELECT reason, count(*) FROM capirelay_dead_letters GROUP BY reason;

-- name: expire_dedup
-- Forget keys older than the window, a chunk at a time so one expiry never holds many
-- row locks.  A key whose event is still queued (its queue_id's row exists: one
-- primary-key probe) is kept however old.
-- Each chunk starts after the last key the chunk before took (`after_*`, in the order
-- of the seen_at index, ties in key order; the caller starts below every key): the
-- pinned keys, which are the oldest (events still queued after 48 hours: a breaker
-- holding a pixel for days), are passed once per expiry instead of once per chunk.
-- Measured (bench/dedup_expiry.py): 200,000 pinned keys ahead of 100,000 expired ones
-- made each of the ten chunks probe all 200,000 again.
-- SKIP LOCKED: a key an enqueue is re-claiming right now is left alone, and the
-- re-check after locking keeps a key that was just re-claimed.  Returns the keys
-- deleted, the keys taken, and the last key taken (the next chunk's `after_*`).
WITH old AS (
    SELECT ctid AS row, event_id, event_name, pixel_id, seen_at FROM capirelay_dedup AS k
    WHERE seen_at <= %(cutoff)s
      AND (seen_at, event_id, event_name, pixel_id)
          > (%(after_seen_at)s::float8, %(after_event_id)s::text COLLATE "C",
             %(after_event_name)s::text COLLATE "C", %(after_pixel_id)s::text COLLATE "C")
      AND NOT EXISTS (SELECT 1 FROM capirelay_queue AS q WHERE q.id = k.queue_id)
    ORDER BY seen_at, event_id, event_name, pixel_id
    LIMIT %(chunk)s
    FOR UPDATE SKIP LOCKED
),
gone AS (
    -- By the locked rows' ctids (a TID scan; a join on the key columns with the CTE is
    -- planned as a hash join over the whole table).  Locked, they cannot have moved.
    DELETE FROM capirelay_dedup AS d
    WHERE d.ctid = ANY(ARRAY(SELECT row FROM old))
      AND d.seen_at <= %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM capirelay_queue AS q WHERE q.id = d.queue_id)
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM old),
       last.seen_at, last.event_id, last.event_name, last.pixel_id
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
    SELECT seen_at, event_id, event_name, pixel_id FROM old
    ORDER BY seen_at DESC, event_id DESC, event_name DESC, pixel_id DESC
    LIMIT 1
) AS last ON true;

-- name: dlq_list
SELECT id, pixel_id, event_name, event_id, payload, event_time, deadline, reason, error,
       attempt_log, test_event_code, queued_at, dead_at
FROM capirelay_dead_letters
WHERE (%(pixel_id)s::text IS NULL OR pixel_id = %(pixel_id)s::text)
  AND (%(event_name)s::text IS NULL OR event_name = %(event_name)s::text)
  AND (%(reason)s::text IS NULL OR reason = %(reason)s::text)
  AND (%(since)s::float8 IS NULL OR dead_at >= %(since)s::float8)
  AND (%(until)s::float8 IS NULL OR dead_at < %(until)s::float8)
ORDER BY dead_at DESC, id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: dlq_get
SELECT id, pixel_id, event_name, event_id, payload, event_time, deadline, reason, error,
       attempt_log, test_event_code, queued_at, dead_at
FROM capirelay_dead_letters
WHERE id = %(id)s;

-- name: dlq_requeue
-- Back to the queue with attempts reset and due now, if the letter can claim its dedup
-- key exactly as enqueue does: a key held by a queued event or by one sent inside the
-- window (a corrected resend, say) leaves the letter in the DLQ, reported as a
-- duplicate.  Letters of this call sharing a key: the lowest id goes, the rest are
-- duplicates.  FOR UPDATE: two concurrent replays of one letter move it once.
-- One row per letter found: (id, re-queued?); `announced` notifies the pixels.
WITH letters AS (
    SELECT id, pixel_id, event_name, event_id FROM capirelay_dead_letters
    WHERE id = ANY(%(ids)s::bigint[])
    FOR UPDATE
),
first_of_key AS (
    SELECT DISTINCT ON (event_id, event_name, pixel_id) *
    FROM letters
    ORDER BY event_id, event_name, pixel_id, id
),
numbered AS (
    SELECT f.*, nextval('capirelay_queue_id_seq') AS queue_id
    FROM (SELECT * FROM first_of_key ORDER BY id) AS f
),
claimed AS (
    INSERT INTO capirelay_dedup AS d (event_id, event_name, pixel_id, seen_at, queue_id)
    SELECT event_id, event_name, pixel_id, %(now)s, queue_id FROM numbered
    ORDER BY event_id, event_name, pixel_id
    ON CONFLICT (event_id, event_name, pixel_id)
        DO UPDATE SET seen_at = excluded.seen_at, queue_id = excluded.queue_id
        WHERE d.seen_at <= %(cutoff)s
          AND NOT EXISTS (SELECT 1 FROM capirelay_queue AS q WHERE q.id = d.queue_id)
    RETURNING queue_id
),
moved AS (
    DELETE FROM capirelay_dead_letters AS l
    USING numbered AS n
    WHERE l.id = n.id AND n.queue_id IN (SELECT queue_id FROM claimed)
    RETURNING l.*, n.queue_id
),
requeued AS (
    INSERT INTO capirelay_queue (id, pixel_id, event_name, event_id, payload, event_time,
                                 deadline, test_event_code, source, queued_at, attempts, state,
                                 available_at, attempt_log)
    OVERRIDING SYSTEM VALUE
    SELECT queue_id, pixel_id, event_name, event_id, payload, event_time, deadline,
           test_event_code, source, %(now)s, 0, 0, %(now)s, attempt_log
    FROM moved
    ORDER BY queue_id
    RETURNING pixel_id
),
announced AS (
    SELECT count(pg_notify(%(channel)s, pixel_id)) AS pixels
    FROM (SELECT DISTINCT pixel_id FROM requeued) AS p
)
SELECT l.id, m.id IS NOT NULL, a.pixels
FROM letters AS l LEFT JOIN moved AS m ON m.id = l.id CROSS JOIN announced AS a
ORDER BY l.id;

-- name: dlq_purge_ids
DELETE FROM capirelay_dead_letters WHERE id = ANY(%(ids)s::bigint[]);

-- name: dlq_purge_filter
DELETE FROM capirelay_dead_letters
WHERE (%(pixel_id)s::text IS NULL OR pixel_id = %(pixel_id)s::text)
  AND (%(event_name)s::text IS NULL OR event_name = %(event_name)s::text)
  AND (%(reason)s::text IS NULL OR reason = %(reason)s::text)
  AND (%(since)s::float8 IS NULL OR dead_at >= %(since)s::float8)
  AND (%(until)s::float8 IS NULL OR dead_at < %(until)s::float8);

-- name: hold_pixel
-- Written by the replica whose breaker opened or that Meta throttled; a longer hold
-- already in place (e.g. an open breaker) is never shortened by a shorter one.
INSERT INTO capirelay_pixel_state AS s
    (pixel_id, hold_until, hold_seconds, reason, code, subcode, updated_at)
VALUES (%(pixel_id)s, %(until)s, %(until)s - %(now)s, %(reason)s, %(code)s, %(subcode)s,
        %(now)s)
ON CONFLICT (pixel_id) DO UPDATE
SET hold_until = excluded.hold_until, hold_seconds = excluded.hold_seconds,
    reason = excluded.reason, code = excluded.code, subcode = excluded.subcode,
    updated_at = excluded.updated_at
WHERE s.hold_until < excluded.hold_until;

-- name: unhold_pixel
DELETE FROM capirelay_pixel_state WHERE pixel_id = %(pixel_id)s;

-- name: ping
SELECT 1;

-- name: queue_breakdown
-- Dashboard view: a full scan, run on page views only (never on the hot path).
SELECT pixel_id, event_name, count(*), min(queued_at), min(deadline)
FROM capirelay_queue
GROUP BY pixel_id, event_name
ORDER BY pixel_id, event_name;

-- name: dlq_breakdown
-- Dashboard view: message and fbtrace_id are those of each group's most recent letter.
SELECT pixel_id, event_name, reason, code, subcode, count(*) AS n, max(dead_at),
       (array_agg(error ->> 'message' ORDER BY dead_at DESC, id DESC))[1],
       (array_agg(error ->> 'user_title' ORDER BY dead_at DESC, id DESC))[1],
       (array_agg(error ->> 'user_msg' ORDER BY dead_at DESC, id DESC))[1],
       (array_agg(error ->> 'fbtrace_id' ORDER BY dead_at DESC, id DESC))[1]
FROM (
    SELECT id, pixel_id, event_name, reason, error, dead_at,
           (error ->> 'code')::integer AS code, (error ->> 'subcode')::integer AS subcode
    FROM capirelay_dead_letters
) AS d
GROUP BY pixel_id, event_name, reason, code, subcode
ORDER BY n DESC, max(dead_at) DESC;

-- name: queue_sample
SELECT id, pixel_id, event_name, event_id, payload, event_time, deadline, attempts,
       test_event_code, queued_at
FROM capirelay_queue
ORDER BY id DESC
LIMIT %(limit)s;

-- name: claim_order_keys
-- Write the order-ledger entries of a request's order events (see 0006_order_ledger.sql);
-- RETURNING names the keys that were new: only their events may be queued.  The
-- `enqueue` statement does this itself; this one serves the requests that take two
-- steps (postgres/_enqueue.py), in the enqueue's transaction, before the dedup claim,
-- keys in order (no deadlock between requests sharing keys).
INSERT INTO capirelay_order_ledger (key, seen_at)
SELECT k, %(now)s FROM unnest(%(keys)b::bytea[]) AS k ORDER BY k
ON CONFLICT (key) DO NOTHING
RETURNING key;

-- name: order_ledger_cap
-- The seen_at of the newest entry beyond the ledger's cap (entries at or before it go).
SELECT seen_at FROM capirelay_order_ledger ORDER BY seen_at DESC OFFSET %(max_entries)s LIMIT 1;

-- name: order_ledger_estimate
-- What the planner knows of the ledger's size: the rows and pages its last vacuum or
-- analyze counted (reltuples -1 before the first since PostgreSQL 14, 0 before that) and
-- the pages it has now.  prune_order_ledger scales the rows counted by the pages added
-- since, as the planner does, so a bulk load counts before any analyze, and skips the
-- walk of a large cap while the ledger is far below it.  The ledger is not read.
SELECT c.reltuples::float8, c.relpages::float8,
       pg_relation_size(c.oid)::float8 / current_setting('block_size')::float8
FROM pg_class AS c WHERE c.oid = to_regclass('capirelay_order_ledger');

-- name: prune_order_ledger
-- Forget entries at or before the cutoff, a chunk at a time, oldest first; SKIP LOCKED
-- leaves a key an enqueue holds right now alone (replicas may prune concurrently).
DELETE FROM capirelay_order_ledger AS l
USING (
    SELECT key FROM capirelay_order_ledger
    WHERE seen_at <= %(cutoff)s
    ORDER BY seen_at
    LIMIT %(chunk)s
    FOR UPDATE SKIP LOCKED
) AS old
WHERE l.key = old.key;

-- name: order_ledger_size
SELECT count(*) FROM capirelay_order_ledger;

-- name: revoke_session
-- End a dashboard session on every replica (until its cookie would have expired anyway),
-- forgetting revocations whose cookies have expired meanwhile.
WITH forgotten AS (
    DELETE FROM capirelay_revoked_sessions WHERE expires_at <= %(now)s
)
INSERT INTO capirelay_revoked_sessions (session_hash, expires_at)
VALUES (%(hash)s, %(expires_at)s)
ON CONFLICT (session_hash) DO UPDATE SET expires_at = excluded.expires_at;

-- name: session_revoked
SELECT 1 FROM capirelay_revoked_sessions WHERE session_hash = %(hash)s;

-- name: record_audit
INSERT INTO capirelay_operator_audit (at, actor, action, target, count, origin)
VALUES (%(at)s, %(actor)s, %(action)s, %(target)s, %(count)s, %(origin)s);

-- name: audit_log
SELECT id, at, actor, action, target, count, origin FROM capirelay_operator_audit
ORDER BY id DESC LIMIT %(limit)s;

-- ------------------------------------------------------------------------------------
-- Receipts, traces and erasure (capirelay.outbox.postgres.receipts; migration 0004).

-- name: write_receipts
-- One set-based statement per call: the receipts arrive as parallel typed arrays
-- (binary parameters the server reads without parsing text), one per column.
-- Duplicates of a key that already has a duplicate receipt bump it; everything else is new.
WITH input AS (
    SELECT * FROM unnest(
        %(pixel_id)b::text[], %(event_name)b::text[], %(event_id)b::text[],
        %(outcome)b::text[], %(source)b::text[], %(recorded_at)b::float8[],
        %(received_at)b::float8[], %(first_attempt_at)b::float8[],
        %(last_attempt_at)b::float8[], %(attempts)b::int[], %(fbtrace_id)b::text[],
        %(events_received)b::int[], %(test_event_code)b::text[], %(reason)b::text[],
        %(problems)b::text[], %(attempt_log)b::text[], %(order_key)b::text[],
        %(identity)b::text[], %(count)b::int[]
    ) WITH ORDINALITY
        AS i (pixel_id, event_name, event_id, outcome, source, recorded_at, received_at,
              first_attempt_at, last_attempt_at, attempts, fbtrace_id, events_received,
              test_event_code, reason, problems, attempt_log, order_key, identity, count, ord)
),
bumped AS (
    UPDATE capirelay_receipts AS r
    SET count = r.count + i.count, last_attempt_at = i.last_attempt_at
    FROM input AS i
    WHERE i.outcome = 'duplicate' AND r.outcome = 'duplicate' AND r.event_id = i.event_id
      AND r.pixel_id = i.pixel_id AND r.event_name = i.event_name
    RETURNING i.ord
)
INSERT INTO capirelay_receipts
    (pixel_id, event_name, event_id, outcome, source, recorded_at, received_at,
     first_attempt_at, last_attempt_at, attempts, fbtrace_id, events_received,
     test_event_code, reason, problems, attempt_log, order_key, identity, count)
SELECT i.pixel_id, i.event_name, i.event_id, i.outcome, i.source, i.recorded_at,
       i.received_at, i.first_attempt_at, i.last_attempt_at, i.attempts, i.fbtrace_id,
       i.events_received, i.test_event_code, i.reason, i.problems::jsonb,
       i.attempt_log::jsonb, i.order_key, i.identity, i.count
FROM input AS i
WHERE i.ord NOT IN (SELECT ord FROM bumped)
ORDER BY i.ord;

-- name: ack_returning
-- As `ack`, returning what the delivered receipts need (written in the same transaction).
WITH acked AS (
    DELETE FROM capirelay_queue
    WHERE id = ANY(ARRAY(SELECT unnest(ids) FROM capirelay_leases WHERE lease_id = %(lease_id)s
                         INTERSECT SELECT unnest(%(ids)b::bigint[])))
    RETURNING pixel_id, event_name, event_id, source, queued_at, attempts, attempt_log,
              test_event_code, payload
),
unheld AS (
    DELETE FROM capirelay_pixel_state
    WHERE reason = 'breaker' AND pixel_id IN (SELECT DISTINCT pixel_id FROM acked)
)
SELECT pixel_id, event_name, event_id, source, queued_at, attempts, attempt_log,
       test_event_code, payload
FROM acked;

-- name: lock_settling
-- The rows a dead-letter call is about to move, locked until its transaction ends (their
-- receipts are written before the move, in the same transaction).
SELECT pixel_id, event_name, event_id, source, queued_at, attempts, attempt_log,
       test_event_code, payload
FROM capirelay_queue
WHERE id = ANY(ARRAY(SELECT unnest(ids) FROM capirelay_leases WHERE lease_id = %(lease_id)s
                     INTERSECT SELECT unnest(%(ids)b::bigint[])))
ORDER BY id
FOR UPDATE OF capirelay_queue;

-- name: receipts_of_event
SELECT id, pixel_id, event_name, event_id, outcome, source, recorded_at, received_at,
       first_attempt_at, last_attempt_at, attempts, fbtrace_id, events_received,
       test_event_code, reason, problems, attempt_log, order_key, identity, count
FROM capirelay_receipts WHERE event_id = %(event_id)s ORDER BY id;

-- name: queued_of_event
-- A queued event is found through its dedup key (event_id leads its primary key, and the
-- key names the queue row while the event is queued): the queue has no event_id index.
SELECT q.pixel_id, q.event_name, q.event_id, q.source, q.queued_at, q.attempts,
       q.attempt_log, q.test_event_code, q.state, q.available_at
FROM capirelay_dedup AS d JOIN capirelay_queue AS q ON q.id = d.queue_id
-- Under the id as sent and under the unverified beacon's namespace (capirelay.orders).
WHERE d.event_id IN (%(event_id)s, %(unverified_id)s) ORDER BY q.id;

-- name: letters_of_event
SELECT pixel_id, event_name, event_id, source, queued_at, attempt_log, test_event_code,
       reason, dead_at
FROM capirelay_dead_letters WHERE event_id IN (%(event_id)s, %(unverified_id)s) ORDER BY id;

-- name: event_ids_of_order
SELECT event_id, max(recorded_at) FROM capirelay_receipts
WHERE order_key = %(key)s AND (%(pixel_id)s::text IS NULL OR pixel_id = %(pixel_id)s::text)
GROUP BY event_id ORDER BY max(id) DESC LIMIT %(limit)s;

-- name: prune_old_receipts
-- One chunk per transaction: pruning never holds many row locks for long.  Oldest id
-- first: ids follow recording order, so the chunk at the head of the primary key holds
-- the oldest receipts (no recorded_at index to maintain on every insert).  A chunk that
-- is not all past the retention ends the pruning.
DELETE FROM capirelay_receipts WHERE id IN (
    SELECT id FROM (SELECT id, recorded_at FROM capirelay_receipts ORDER BY id
                    LIMIT %(chunk)s) AS head
    WHERE recorded_at < %(cutoff)s);

-- name: prune_receipts_over_cap
DELETE FROM capirelay_receipts WHERE id IN (
    SELECT id FROM capirelay_receipts
    WHERE id <= (SELECT max(id) FROM capirelay_receipts) - %(cap)s
    ORDER BY id LIMIT %(chunk)s);

-- name: receipt_count
SELECT count(*) FROM capirelay_receipts;

-- name: erasure_queued_candidates
-- Erasure reads candidates by a byte search of the payload and confirms each in Python
-- (capirelay.outbox.receipts.carries): the hashes sit inside the orjson payload.
SELECT id, pixel_id, payload FROM capirelay_queue
WHERE position(%(needle)s::bytea IN payload) > 0;

-- name: erasure_letter_candidates
SELECT id, pixel_id, payload FROM capirelay_dead_letters
WHERE position(%(needle)s::bytea IN payload) > 0;

-- name: erasure_receipt_candidates
SELECT id, pixel_id, identity FROM capirelay_receipts WHERE strpos(identity, %(key)s) > 0;

-- name: erase_queued
WITH gone AS (
    DELETE FROM capirelay_queue WHERE id = ANY(%(ids)s::bigint[])
    RETURNING id
)
SELECT count(*) FROM gone;

-- name: erase_letters
DELETE FROM capirelay_dead_letters WHERE id = ANY(%(ids)s::bigint[]);

-- name: erase_receipts
DELETE FROM capirelay_receipts WHERE id = ANY(%(ids)s::bigint[]);

-- name: record_erasure
INSERT INTO capirelay_erasures
    (requested_at, field, value_sha256, pixel_id, queued, dead_letters, receipts)
VALUES (%(now)s, %(field)s, %(digest)s, %(pixel_id)s, %(queued)s, %(dead_letters)s,
        %(receipts)s);

-- name: erasure_log
SELECT requested_at, field, value_sha256, pixel_id, queued, dead_letters, receipts
FROM capirelay_erasures ORDER BY id DESC LIMIT %(limit)s;

-- ------------------------------------------------------------------------------------
-- Delivered receipts, one row per acked batch (migration 0009; postgres/_batches.py).
-- The columns every batch read returns, in this order, are the ones
-- capirelay.outbox.postgres._batches.receipts_of_batch unpacks.

-- name: insert_receipt_batch
INSERT INTO capirelay_receipt_batches (
    recorded_at, last_attempt_at, fbtrace_id, events_received, events, pixel_ids, event_names,
    event_ids, sources, received_at, first_attempt_at, attempts, test_event_codes,
    attempt_logs, order_keys, identities)
VALUES (%(recorded_at)s, %(last_attempt_at)s, %(fbtrace_id)s, %(events_received)s,
        %(events)s, %(pixel_ids)b::text[], %(event_names)b::text[], %(event_ids)b::text[],
        %(sources)b::text[], %(received_at)b::float8[], %(first_attempt_at)b::float8[],
        %(attempts)b::int[], %(test_event_codes)b::text[], %(attempt_logs)b::text[],
        %(order_keys)b::text[], %(identities)b::text[]);

-- name: batches_of_event
-- The GIN index answers "which batches hold this event id" (@> is its operator).
SELECT id, recorded_at, last_attempt_at, fbtrace_id, events_received, pixel_ids, event_names,
       event_ids, sources, received_at, first_attempt_at, attempts, test_event_codes,
       attempt_logs, order_keys, identities
FROM capirelay_receipt_batches
WHERE event_ids @> ARRAY[%(event_id)s::text] ORDER BY id;

-- name: batches_of_order
-- Order ids are looked up by operators only: this reads the kept batches' order keys.
SELECT id, recorded_at, last_attempt_at, fbtrace_id, events_received, pixel_ids, event_names,
       event_ids, sources, received_at, first_attempt_at, attempts, test_event_codes,
       attempt_logs, order_keys, identities
FROM capirelay_receipt_batches
WHERE order_keys @> ARRAY[%(key)s::text] ORDER BY id DESC;

-- name: batches_of_identity
SELECT id, recorded_at, last_attempt_at, fbtrace_id, events_received, pixel_ids, event_names,
       event_ids, sources, received_at, first_attempt_at, attempts, test_event_codes,
       attempt_logs, order_keys, identities
FROM capirelay_receipt_batches
WHERE strpos(array_to_string(identities, ' '), %(key)s) > 0;

-- name: prune_old_receipt_batches
-- Retention: oldest batches first (ids follow recording order), a chunk at a time.
DELETE FROM capirelay_receipt_batches WHERE id IN (
    SELECT id FROM (SELECT id, recorded_at FROM capirelay_receipt_batches ORDER BY id
                    LIMIT %(chunk)s) AS head
    WHERE recorded_at < %(cutoff)s)
RETURNING events;

-- name: prune_receipt_batches_over_cap
-- Cap: keep the newest batches holding at most `room` receipts; the oldest go first.
DELETE FROM capirelay_receipt_batches WHERE id IN (
    SELECT id FROM (SELECT id, sum(events) OVER (ORDER BY id DESC) AS newer
                    FROM capirelay_receipt_batches) AS b
    WHERE newer > %(room)s ORDER BY id LIMIT %(chunk)s)
RETURNING events;

-- name: delete_receipt_batch
DELETE FROM capirelay_receipt_batches WHERE id = %(id)s;

-- name: batched_receipt_count
SELECT coalesce(sum(events), 0) FROM capirelay_receipt_batches;

-- ------------------------------------------------------------------------------------
-- Migrations (capirelay.outbox.postgres.migrate), run on an autocommit connection.

-- name: migration_lock
-- The advisory lock is per schema: two gateways migrating one schema take turns, two
-- schemas of one database migrate side by side.
SELECT pg_advisory_lock(%(lock_class)s, hashtext(coalesce(current_schema(), '')));

-- name: migration_unlock
SELECT pg_advisory_unlock(%(lock_class)s, hashtext(coalesce(current_schema(), '')));

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS capirelay_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_table_exists
SELECT to_regclass('capirelay_migrations') IS NOT NULL;

-- name: applied_migrations
SELECT version FROM capirelay_migrations ORDER BY version;

-- name: record_migration
INSERT INTO capirelay_migrations (version, name) VALUES (%(version)s, %(name)s);

-- ------------------------------------------------------------------------------------
-- Work announcements.

-- name: listen_for_work
-- The channel enqueue's pg_notify announces queued pixels on (CHANNEL; LISTEN takes no
-- parameter, so the loader writes the constant in).
LISTEN {channel};
