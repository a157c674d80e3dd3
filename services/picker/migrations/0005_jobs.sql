-- Imports (and, later, transforms) running in the background for a user. `source` says what
-- was asked without secrets (no tokens, no query strings); `total` is -1 while unknown.
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    owner_id      TEXT NOT NULL,
    kind          TEXT NOT NULL,
    state         TEXT NOT NULL,
    source        TEXT NOT NULL,
    bytes         BIGINT NOT NULL DEFAULT 0,
    total         BIGINT NOT NULL DEFAULT -1,
    file_id       TEXT NOT NULL DEFAULT '',
    error_code    TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner_id, created_at);
