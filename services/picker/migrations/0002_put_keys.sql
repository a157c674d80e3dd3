-- Idempotency keys of internal PutFile calls: a retried import or transform result returns
-- the file the first call stored instead of storing another.
CREATE TABLE IF NOT EXISTS put_keys (
    owner_id   TEXT NOT NULL,
    key        TEXT NOT NULL,
    file_id    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (owner_id, key)
);
