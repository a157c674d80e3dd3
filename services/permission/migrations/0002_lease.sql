-- The longest cache lease any replica has run with (milliseconds). Writers that remove
-- rights wait at least this long, so a replica configured with a longer lease than the
-- writer's own is still covered. Only ever raised by the service; lower it by hand once
-- every replica runs with the shorter lease.
ALTER TABLE perm_meta ADD COLUMN lease_ms BIGINT NOT NULL DEFAULT 0;
