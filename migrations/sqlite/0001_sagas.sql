-- The saga store for the embedded demo and small single-node installs.
-- Same tables and meaning as migrations/postgres; SQLite-specific forms:
-- times are INTEGER microseconds since the Unix epoch (UTC) so comparisons
-- are numeric, ids and JSON are TEXT.

CREATE TABLE sagas (
    saga_id         TEXT    PRIMARY KEY,       -- UUIDv7 text: sorts by creation time
    event_id        TEXT    NOT NULL UNIQUE,   -- the PartnerCreated event_id: the dedup key
    correlation_id  TEXT    NOT NULL,
    partner_id      TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN (
                        'started', 'creating_alliance', 'awaiting_alliance',
                        'compensating', 'completed', 'compensated', 'failed')),
    step            TEXT    NOT NULL CHECK (step IN ('create_alliance', 'delete_partner')),
    attempts        INTEGER NOT NULL CHECK (attempts >= 0),
    alliance_id     TEXT,
    last_error      TEXT,
    payload         TEXT    NOT NULL,          -- JSON object
    traceparent     TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    deadline_at     INTEGER NOT NULL,
    next_attempt_at INTEGER,                   -- NULL once terminal
    lease_owner     TEXT,
    lease_until     INTEGER,
    version         INTEGER NOT NULL
);

CREATE INDEX sagas_due_idx ON sagas (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX sagas_state_idx ON sagas (state, saga_id);
CREATE INDEX sagas_partner_idx ON sagas (partner_id, saga_id);
CREATE INDEX sagas_correlation_idx ON sagas (correlation_id, saga_id);

CREATE TABLE saga_history (
    saga_id    TEXT    NOT NULL REFERENCES sagas (saga_id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    detail     TEXT,
    at         INTEGER NOT NULL,
    PRIMARY KEY (saga_id, seq)
);

CREATE TABLE outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- relay order; never reused
    channel       TEXT    NOT NULL,
    message       TEXT    NOT NULL,                   -- the envelope JSON, traceparent included
    created_at    INTEGER NOT NULL,
    claimed_by    TEXT,
    claimed_until INTEGER
);
