-- Which instance made each transition (its INSTANCE_ID), so a saga's
-- history shows who drove it and when another instance took over.
-- Rows written before this migration have none.
ALTER TABLE saga_history ADD COLUMN instance_id TEXT;
