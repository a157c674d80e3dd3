-- One row per login session (refresh-token family). Rotation locks it (PostgreSQL row lock,
-- SQLite write lock) and requires it unrevoked, so a revocation and a rotation racing each
-- other can never leave a live token in a revoked family.
CREATE TABLE IF NOT EXISTS refresh_families (
    family_id  TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX IF NOT EXISTS refresh_families_expiry ON refresh_families (expires_at);
