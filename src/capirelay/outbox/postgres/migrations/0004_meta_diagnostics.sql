-- capirelay PostgreSQL outbox, migration 0004: Meta's diagnostics and what was delivered per hour.
--
-- capirelay_meta_checks: the latest result of every diagnostics check per pixel (Meta's
-- da_checks and the Dataset Quality API's diagnostics), with Meta's own text and link.
-- capirelay_meta_check_history: one row each time a check starts or stops failing.
-- capirelay_meta_runs: per pixel, the last scheduled run (when, error, and a JSON
-- summary: pixel settings, reconciliation, dedup feedback, data freshness).
-- capirelay_delivered_hourly: events Meta acknowledged (events_received) per pixel, event
-- name and hour, added to by every replica, compared with Meta's /stats.
-- capirelay_meta_lease: a lease row so one replica at a time runs the schedule.

CREATE TABLE capirelay_meta_checks (
    pixel_id   text             NOT NULL,
    key        text             NOT NULL,
    source     text             NOT NULL,
    failing    boolean          NOT NULL,
    result     text             NOT NULL,
    title      text             NOT NULL,
    message    text             NOT NULL,
    action_uri text             NOT NULL,
    changed_at double precision NOT NULL,
    checked_at double precision NOT NULL,
    PRIMARY KEY (pixel_id, key)
);

CREATE TABLE capirelay_meta_check_history (
    id       bigserial        PRIMARY KEY,
    pixel_id text             NOT NULL,
    key      text             NOT NULL,
    failing  boolean          NOT NULL,
    result   text             NOT NULL,
    title    text             NOT NULL,
    message  text             NOT NULL,
    at       double precision NOT NULL
);
CREATE INDEX capirelay_meta_check_history_pixel ON capirelay_meta_check_history (pixel_id, at);

CREATE TABLE capirelay_meta_runs (
    pixel_id text             PRIMARY KEY,
    ran_at   double precision NOT NULL,
    error    text,
    summary  text             NOT NULL
);

CREATE TABLE capirelay_delivered_hourly (
    pixel_id     text   NOT NULL,
    event_name   text   NOT NULL,
    hour         bigint NOT NULL,
    sent         bigint NOT NULL,
    acknowledged bigint NOT NULL,
    PRIMARY KEY (pixel_id, hour, event_name)
);

CREATE TABLE capirelay_meta_lease (
    name   text             PRIMARY KEY,
    holder text             NOT NULL,
    until  double precision NOT NULL
);
