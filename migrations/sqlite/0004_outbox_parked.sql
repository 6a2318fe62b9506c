-- Parked outbox messages: see migrations/postgres/0004_outbox_parked.sql
-- for why, and why a table of its own. Here `message` is TEXT as in the
-- outbox, so even a row that is not JSON at all is kept as it was.

ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0);
ALTER TABLE outbox ADD COLUMN last_error TEXT;

CREATE TABLE outbox_parked (
    id          INTEGER PRIMARY KEY,   -- its outbox id: where it stood in relay order
    channel     TEXT    NOT NULL,
    message     TEXT    NOT NULL,      -- as stored
    created_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    parked_at   INTEGER NOT NULL
);
