-- A file's folder: a relative path of names ('' = the top), as uploaded (tus `relativePath`
-- metadata, the bulk API's `folder`), so trees pushed in come back out as trees.
ALTER TABLE files ADD COLUMN folder TEXT NOT NULL DEFAULT '';
