-- Each user's events, numbered 1, 2, 3... per user (the id clients resume from), kept for
-- `notification.retention`. `event_id` is the publisher's id: a retried Publish stores nothing
-- twice.
CREATE TABLE IF NOT EXISTS notification_events (
    user_id  TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    type     TEXT NOT NULL,
    source   TEXT NOT NULL,
    subject  TEXT NOT NULL,
    time_ms  BIGINT NOT NULL,
    data     TEXT NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS notification_events_once ON notification_events (user_id, event_id);
CREATE INDEX IF NOT EXISTS notification_events_age ON notification_events (time_ms);
-- The last number given to each user's events (never reused, even after trimming).
CREATE TABLE IF NOT EXISTS notification_seqs (
    user_id TEXT PRIMARY KEY,
    last    BIGINT NOT NULL
);
