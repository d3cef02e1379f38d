-- capirelay PostgreSQL outbox, migration 0002: per-pixel holds shared by all replicas.
--
-- When one replica's circuit breaker opens (token revoked, pixel misconfigured) or Meta
-- throttles the pixel, that replica writes a hold here.  Every replica's lease statement
-- checks it, so the others stop leasing (and sending) that pixel until the hold ends,
-- instead of each discovering the revoked token with a full batch of its own.
-- A 'breaker' hold does not simply run out: when it ends, the first replica to lease
-- re-arms it for hold_seconds and sends the one probe batch; the hold goes away when
-- an ack proves the pixel works again.  A 'throttle' hold just runs out.
-- One row per pixel: tiny, updated rarely, read by primary key.

CREATE TABLE capirelay_pixel_state (
    pixel_id   text             PRIMARY KEY,
    hold_until double precision NOT NULL,
    hold_seconds double precision NOT NULL,
    reason     text             NOT NULL,
    code       integer,
    subcode    integer,
    updated_at double precision NOT NULL
);
