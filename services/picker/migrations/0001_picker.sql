-- Picker file metadata, portable between PostgreSQL and SQLite. Who may see a file is the
-- permission service's business (perm_tuples); this table says what the file is.
CREATE TABLE IF NOT EXISTS files (
    id           TEXT PRIMARY KEY,   -- UUIDv7: id order is creation order
    owner_id     TEXT NOT NULL,
    name         TEXT NOT NULL,
    size         BIGINT NOT NULL,
    content_type TEXT NOT NULL,      -- sniffed from the bytes
    content_hash TEXT NOT NULL,      -- BLAKE3, hex
    engine_id    TEXT NOT NULL,      -- the chunk store's file id (manifest)
    created_at   BIGINT NOT NULL,    -- ms since the epoch
    updated_at   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_owner ON files (owner_id, content_hash);
