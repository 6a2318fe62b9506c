-- The console's chart of sagas ended per minute: see
-- migrations/postgres/0007_console.sql.
CREATE INDEX sagas_ended_idx ON sagas (updated_at, state)
    WHERE state IN ('completed', 'compensated', 'failed');
