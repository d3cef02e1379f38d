-- capirelay SQLite outbox, schema version 3: the order ledger (see capirelay/orders.py).
--
-- One row per accepted order event, kept for order_ledger.retention_days (default 400)
-- where the dedup table keeps keys for 48 hours.  key is 16 bytes of a SHA-256 digest of
-- pixel, event name, test event code and order id (or the preset's event id): no order
-- id is stored.  WITHOUT ROWID: the key is the table, one B-tree instead of two.
-- The seen_at index serves the background pruning (oldest first).

CREATE TABLE order_ledger (
    key     BLOB PRIMARY KEY,
    seen_at REAL NOT NULL
) WITHOUT ROWID;

CREATE INDEX order_ledger_by_seen_at ON order_ledger (seen_at);
