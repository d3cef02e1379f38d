-- capirelay PostgreSQL outbox, migration 0011: the receipt batches' event-id index takes
-- its entries directly, without a pending list.
--
-- 0009 created capirelay_receipt_batches_by_event_id with fastupdate on: every ack put
-- its batch's event ids on the index's pending list, merged into the index later (by an
-- insert that finds the list past gin_pending_list_limit, 4 MB by default, or by
-- vacuum).  Measured with bench/pg_costs.py (bench/postgres.py's statement loop, four
-- alternating pairs; docs/postgres.md, "Fifth step"): inserting into the index directly
-- cost less in every pair, 6.65 against 7.75 us (medians) of database CPU per delivered
-- event for the ack with its receipts, the merge counted.  It also takes two costs off the wrong callers: the ack
-- that happened to find the list full paid for merging 4 MB of other acks' entries, and
-- every `capirelay trace` read the whole pending list before the index proper.
--
-- Turning fastupdate off leaves entries already pending where they are: merge them now.
ALTER INDEX capirelay_receipt_batches_by_event_id SET (fastupdate = off);
SELECT gin_clean_pending_list('capirelay_receipt_batches_by_event_id');
