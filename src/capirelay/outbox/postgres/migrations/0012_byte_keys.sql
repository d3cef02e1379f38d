-- capirelay PostgreSQL outbox, migration 0012: identifiers compare as bytes.
--
-- Measured (bench/pg_costs.py, docs/postgres.md "Sixth step"): a per-event cost that
-- serves nothing capirelay asks of the database.
--
-- * Identifiers (pixel ids, event names, event ids, lease ids) were text in the
--   database's collation.  Every B-tree step of the dedup key, the ready index and the
--   lease lookups then compared them with the locale's rules (strcoll), which is slow
--   even for C.UTF-8 and slower still for en_US.UTF-8 and friends.  capirelay only ever
--   asks "equal or not" and "some fixed order" of them (the enqueue claims keys in a
--   fixed order so that requests sharing keys cannot deadlock; the Python side ranks
--   them by code point, which is the byte order of UTF-8).  COLLATE "C" compares bytes:
--   the same equality (every deterministic collation's equality is byte equality, so
--   no two keys that were distinct become equal, nor the reverse), a cheaper order.
--   Every such column of every capirelay table changes, so that joins between tables
--   compare in one collation and keep using their indexes.  No table is rewritten
--   (the type stays text); the indexes on those columns are rebuilt.
--
-- Not in this migration: a BRIN index for capirelay_dedup_by_seen_at.  It measured
-- 1.7 us an event cheaper than the B-tree, but a BRIN range only ever widens: once
-- vacuum lets new keys reuse the pages of expired ones, every range spans the whole
-- 48 h and the hourly expiry would read the whole table instead of its oldest 2%.

DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT c.table_name, c.column_name, c.data_type
        FROM information_schema.columns AS c
        WHERE c.table_schema = current_schema()
          AND c.table_name LIKE 'capirelay\_%'
          AND c.column_name IN ('pixel_id', 'event_name', 'event_id', 'lease_id',
                                'pixel_ids', 'event_names', 'event_ids')
          AND (c.data_type = 'text' OR (c.data_type = 'ARRAY' AND c.udt_name = '_text'))
        ORDER BY c.table_name, c.column_name
    LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN %I TYPE %s COLLATE "C"',
                       col.table_name, col.column_name,
                       CASE WHEN col.data_type = 'ARRAY' THEN 'text[]' ELSE 'text' END);
    END LOOP;
END
$$;
