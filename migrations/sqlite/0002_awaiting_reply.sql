-- Broker mode: see migrations/postgres/0002_awaiting_reply.sql.
ALTER TABLE sagas ADD COLUMN awaiting_reply INTEGER NOT NULL DEFAULT 0 CHECK (awaiting_reply IN (0, 1));
