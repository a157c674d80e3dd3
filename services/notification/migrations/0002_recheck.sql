-- 1 when the event is about the content of the file `subject`: delivered (live or replayed)
-- only to users who may still read that file.
ALTER TABLE notification_events ADD COLUMN recheck BIGINT NOT NULL DEFAULT 0;
