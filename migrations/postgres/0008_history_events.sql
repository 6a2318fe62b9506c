-- The saga-events each transition emitted into the outbox (their event_type values,
-- space-separated, in order; NULL for none), so a saga's page shows what
-- went out at each step: the outbox row itself is deleted once relayed.
-- Rows written before this migration have none recorded.
ALTER TABLE saga_history ADD COLUMN events TEXT;
