-- capirelay PostgreSQL outbox, schema version 4: the order ledger (see capirelay/orders.py).
--
-- One row per accepted order event, kept for order_ledger.retention_days (default 400)
-- where capirelay_dedup keeps keys for 48 hours.  key is 16 bytes of a SHA-256 digest of
-- pixel, event name, test event code and order id (or the preset's event id): no order
-- id is stored.  enqueue inserts the keys of a request's order events (in key order, so
-- concurrent requests lock them in one order) before it claims their dedup keys, in the
-- same transaction; across replicas the primary key arbitrates, exactly as for dedup.
-- The seen_at index serves the background pruning (oldest first).

CREATE TABLE capirelay_order_ledger (
    key     bytea            PRIMARY KEY,
    seen_at double precision NOT NULL
);

CREATE INDEX capirelay_order_ledger_by_seen_at ON capirelay_order_ledger (seen_at);
