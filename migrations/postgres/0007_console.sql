-- The console's chart of sagas ended per minute (src/store/operator/console.rs).
-- Partial, so only a saga's terminal transition adds an entry; with `state`
-- in it, the count per minute and state is read from the index alone.
CREATE INDEX sagas_ended_idx ON sagas (updated_at, state)
    WHERE state IN ('completed', 'compensated', 'failed');
