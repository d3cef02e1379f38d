-- capirelay PostgreSQL outbox, migration 0008: room on dedup pages for the ack's update.
--
-- Every delivered event's ack sets its dedup key's `queued` flag to false (0003).  That
-- column is in no index, so PostgreSQL can keep the new row version on the same page
-- without touching the table's two indexes (a HOT update): but only if the page has
-- room.  With the default fillfactor (100) enqueue packs dedup pages full and nearly
-- every unpin became a new tuple on another page plus an entry in each index.  Leaving
-- half of each page free (a dedup row and its unpinned version are the same size) makes the unpin heap-only; the dead version it leaves is
-- pruned from the page by the next access to it, with or without autovacuum.
-- Applies to pages written from now on (existing pages keep their fill until rewritten).

ALTER TABLE capirelay_dedup SET (fillfactor = 50);
