-- capirelay PostgreSQL outbox, migration 0004: dashboard sessions ended at logout, and the
-- audit trail of dead-letter replays and purges (same shapes as SQLite's version 3).
--
-- capirelay_revoked_sessions: a logged-out session's id (sha256 of its nonce, never the
-- cookie), kept until the cookie would have expired anyway; every replica checks it, so
-- a logout holds on all of them.
CREATE TABLE capirelay_revoked_sessions (
    session_hash text             PRIMARY KEY,
    expires_at   double precision NOT NULL
);

-- capirelay_operator_audit: who replayed or purged what, when, and how many letters.
CREATE TABLE capirelay_operator_audit (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     double precision NOT NULL,
    actor  text             NOT NULL,
    action text             NOT NULL,
    target text             NOT NULL,
    count  integer          NOT NULL,
    origin text             NOT NULL
);
