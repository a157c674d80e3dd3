-- Transform results by (source content, transform): `transform` is `v<pipeline version>:` and
-- the canonical operation string. The result is its own engine file; users' result files are
-- joins of its chunks, not copies. Least recently used entries are evicted beyond
-- picker.transform_cache_max.
CREATE TABLE IF NOT EXISTS transform_cache (
    source_hash  TEXT NOT NULL,
    transform    TEXT NOT NULL,
    engine_id    TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL,
    width        BIGINT NOT NULL DEFAULT 0,
    height       BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    used_at      BIGINT NOT NULL,
    PRIMARY KEY (source_hash, transform)
);
CREATE INDEX IF NOT EXISTS transform_cache_used ON transform_cache (used_at);
-- A file made by a transform names its source file and the transform (as in the cache).
ALTER TABLE files ADD COLUMN derived_from TEXT NOT NULL DEFAULT '';
ALTER TABLE files ADD COLUMN transform TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS files_derived ON files (owner_id, derived_from);
