-- Permission schema, portable between PostgreSQL and SQLite (the embedded default).
--
-- Grants are relation tuples in the Zanzibar shape: object_type:object_id#relation@
-- subject_type:subject_id[#subject_relation]. Today objects are files and subjects are
-- users (subject_relation ''); folders (`folder:x`, with a `parent` relation) and groups
-- (`group:g#member`) fit the same table without a rewrite.

-- One row: the revision of the last committed change. Writers bump it first, so its row
-- lock orders every change: revision order is commit order.
CREATE TABLE IF NOT EXISTS perm_meta (
    id       INTEGER PRIMARY KEY,
    revision BIGINT NOT NULL
);
INSERT INTO perm_meta (id, revision) VALUES (1, 0) ON CONFLICT DO NOTHING;

-- Every object the service knows, with its owner (who holds every right, always).
CREATE TABLE IF NOT EXISTS perm_objects (
    object_type TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revision    BIGINT NOT NULL,
    PRIMARY KEY (object_type, object_id)
);

-- The tuples. The primary key serves checks (object, then subject); the second index serves
-- ListAccessible (subject, then objects in order).
CREATE TABLE IF NOT EXISTS perm_tuples (
    object_type      TEXT NOT NULL,
    object_id        TEXT NOT NULL,
    subject_type     TEXT NOT NULL,
    subject_id       TEXT NOT NULL,
    subject_relation TEXT NOT NULL,
    relation         TEXT NOT NULL,
    granted_by       TEXT NOT NULL,
    granted_at       BIGINT NOT NULL,
    revision         BIGINT NOT NULL,
    PRIMARY KEY (object_type, object_id, subject_type, subject_id, subject_relation, relation)
);
CREATE INDEX IF NOT EXISTS perm_tuples_by_subject
    ON perm_tuples (subject_type, subject_id, subject_relation, object_type, object_id, relation);

-- The change log every replica reads to invalidate its cache. subject_id '' means every
-- subject of the object (created or deleted). Pruned after an hour.
CREATE TABLE IF NOT EXISTS perm_changes (
    revision    BIGINT NOT NULL,
    object_type TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    subject_id  TEXT NOT NULL,
    changed_at  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS perm_changes_by_revision ON perm_changes (revision);
CREATE INDEX IF NOT EXISTS perm_changes_by_time ON perm_changes (changed_at);
