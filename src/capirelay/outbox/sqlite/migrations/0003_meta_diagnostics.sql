-- capirelay SQLite outbox, schema version 3: Meta's diagnostics and what was delivered per hour.
--
-- meta_checks: the latest result of every diagnostics check per pixel (Meta's
-- da_checks and the Dataset Quality API's diagnostics), with Meta's own text and link.
-- meta_check_history: one row each time a check starts or stops failing.
-- meta_runs: per pixel, the last scheduled run (when, error, and a JSON
-- summary: pixel settings, reconciliation, dedup feedback, data freshness).
-- delivered_hourly: events Meta acknowledged (events_received) per pixel, event
-- name and hour, added to by every replica, compared with Meta's /stats.
-- meta_lease: a lease row so one replica at a time runs the schedule.
-- Keyed tables are WITHOUT ROWID and the small history table has no index, so the step
-- adds five pages to a new database (a quota-capped outbox keeps its room for events).

CREATE TABLE meta_checks (
    pixel_id   text             NOT NULL,
    key        text             NOT NULL,
    source     text             NOT NULL,
    failing    integer          NOT NULL,
    result     text             NOT NULL,
    title      text             NOT NULL,
    message    text             NOT NULL,
    action_uri text             NOT NULL,
    changed_at real NOT NULL,
    checked_at real NOT NULL,
    PRIMARY KEY (pixel_id, key)
) WITHOUT ROWID;

CREATE TABLE meta_check_history (
    id       INTEGER PRIMARY KEY,
    pixel_id text             NOT NULL,
    key      text             NOT NULL,
    failing  integer          NOT NULL,
    result   text             NOT NULL,
    title    text             NOT NULL,
    message  text             NOT NULL,
    at       real NOT NULL
);

CREATE TABLE meta_runs (
    pixel_id text             PRIMARY KEY,
    ran_at   real NOT NULL,
    error    text,
    summary  text             NOT NULL
) WITHOUT ROWID;

CREATE TABLE delivered_hourly (
    pixel_id     text   NOT NULL,
    event_name   text   NOT NULL,
    hour         integer NOT NULL,
    sent         integer NOT NULL,
    acknowledged integer NOT NULL,
    PRIMARY KEY (pixel_id, hour, event_name)
) WITHOUT ROWID;

CREATE TABLE meta_lease (
    name   text             PRIMARY KEY,
    holder text             NOT NULL,
    until  real NOT NULL
) WITHOUT ROWID;
