-- Resumable (tus) uploads. The bytes and the acknowledged offset live in the chunk engine's
-- session (`session_id`); this row holds what the protocol adds: who may see it, the declared
-- length (NULL while deferred), the metadata as sent, expiry, and the file it became.
CREATE TABLE IF NOT EXISTS uploads (
    id         TEXT PRIMARY KEY,
    owner_id   TEXT NOT NULL,
    session_id TEXT NOT NULL,
    length     BIGINT,
    metadata   TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    file_id    TEXT,
    concat     TEXT,
    part_engine_id TEXT
);
CREATE INDEX IF NOT EXISTS uploads_by_expiry ON uploads (expires_at);
CREATE INDEX IF NOT EXISTS uploads_by_owner ON uploads (owner_id);
