-- The relay must never be stopped by one message. A message it cannot
-- publish is parked: taken out of its queue, kept with the reason, for a
-- person to look at. Two kinds:
--   * a row that cannot be read back as a message (not an envelope: an
--     older version's row, a bug, a hand edit): parked at once;
--   * a message the broker refuses on its own merits while it answers
--     (e.g. over its maximum message size): parked after a few attempts.
--
-- A table of its own rather than flag columns on outbox: the outbox stays
-- exactly "what is still to relay", so the relay's claim, the backlog
-- count and any query an operator already runs on it keep their meaning,
-- and parked rows never lie in the way of the claim's scan. A parked row
-- keeps its outbox id (its place in relay order), channel and message as
-- stored, so it can be read, fixed and queued again by hand:
--   INSERT INTO outbox (id, channel, message, created_at)
--       SELECT id, channel, message, created_at FROM outbox_parked WHERE id = …;
--   DELETE FROM outbox_parked WHERE id = …;

-- Failed attempts to publish a message that the broker refused while it
-- answered; at the relay's limit the message is parked.
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0);
ALTER TABLE outbox ADD COLUMN last_error text;  -- the broker's answer to the last attempt

CREATE TABLE outbox_parked (
    id          bigint      PRIMARY KEY,   -- its outbox id: where it stood in relay order
    channel     text        NOT NULL,
    message     jsonb       NOT NULL,      -- as stored, whatever its shape
    created_at  timestamptz NOT NULL,      -- when it entered the outbox
    attempts    integer     NOT NULL,      -- publishes tried; 0 when it could not be read
    reason      text        NOT NULL,      -- why: the decoding error or the broker's refusal
    parked_at   timestamptz NOT NULL
);
