-- capirelay SQLite outbox, version 3: dashboard sessions ended at logout, and the audit
-- trail of dead-letter replays and purges.
--
-- revoked_sessions: a logged-out session's id (sha256 of its nonce, never the cookie),
-- kept until the cookie would have expired anyway.  Every replica sharing the storage
-- checks it, so a logout holds everywhere.
CREATE TABLE revoked_sessions (
    session_hash TEXT PRIMARY KEY,
    expires_at   REAL NOT NULL
) WITHOUT ROWID;

-- operator_audit: who replayed or purged what, when, and how many letters it touched.
CREATE TABLE operator_audit (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        REAL    NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    target    TEXT    NOT NULL,
    count     INTEGER NOT NULL,
    origin    TEXT    NOT NULL
);
