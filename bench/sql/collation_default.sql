-- Puts migration 0012 back for bench/pg_costs.py's A/B: every capirelay identifier column
-- in the database's default collation again (the indexes on them are rebuilt).
DO $$
DECLARE col record;
BEGIN
  FOR col IN SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns AS c
    WHERE c.table_schema = current_schema() AND c.table_name LIKE 'capirelay\_%'
      AND c.column_name IN ('pixel_id','event_name','event_id','lease_id','pixel_ids','event_names','event_ids')
      AND (c.data_type = 'text' OR (c.data_type = 'ARRAY' AND c.udt_name = '_text'))
  LOOP
    EXECUTE format('ALTER TABLE %I ALTER COLUMN %I TYPE %s COLLATE "default"', col.table_name, col.column_name,
                   CASE WHEN col.data_type = 'ARRAY' THEN 'text[]' ELSE 'text' END);
  END LOOP;
END $$;
