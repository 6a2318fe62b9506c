-- The saga store. Every transition is one atomic write of the saga row, one
-- history row and the messages it causes (the outbox), so a crash can never
-- leave a state change without its history or its announcements.

-- One row per PartnerCreated event: the saga's current state.
CREATE TABLE sagas (
    saga_id         uuid PRIMARY KEY,          -- UUIDv7: time-ordered, so it also pages newest-first
    event_id        text        NOT NULL,      -- the PartnerCreated event_id: the dedup key
    correlation_id  text        NOT NULL,
    partner_id      text        NOT NULL,
    state           text        NOT NULL CHECK (state IN (
                        'started', 'creating_alliance', 'awaiting_alliance',
                        'compensating', 'completed', 'compensated', 'failed')),
    step            text        NOT NULL CHECK (step IN ('create_alliance', 'delete_partner')),
    attempts        integer     NOT NULL CHECK (attempts >= 0),   -- at the current step
    alliance_id     text,
    last_error      text,
    payload         jsonb       NOT NULL,      -- the partner as announced, passed on to alliances
    traceparent     text,                      -- W3C trace context of the starting event
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    deadline_at     timestamptz NOT NULL,      -- past it, a forward saga is compensated
    next_attempt_at timestamptz,               -- next participant call; NULL once terminal
    lease_owner     text,                      -- the instance driving it now ...
    lease_until     timestamptz,               -- ... until then; after that recovery may take it
    version         integer     NOT NULL,      -- optimistic concurrency: bumped by each transition
    CONSTRAINT sagas_event_id_unique UNIQUE (event_id)
);

-- The recovery sweeper's queue: only live sagas carry a due time.
CREATE INDEX sagas_due_idx ON sagas (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
-- GET /sagas filters, newest first.
CREATE INDEX sagas_state_idx ON sagas (state, saga_id DESC);
CREATE INDEX sagas_partner_idx ON sagas (partner_id, saga_id DESC);
CREATE INDEX sagas_correlation_idx ON sagas (correlation_id, saga_id DESC);

-- Every transition, oldest first; seq equals the saga version it produced.
CREATE TABLE saga_history (
    saga_id    uuid        NOT NULL REFERENCES sagas (saga_id) ON DELETE CASCADE,
    seq        integer     NOT NULL,
    from_state text,                           -- NULL for the row that created the saga
    to_state   text        NOT NULL,
    reason     text        NOT NULL,
    detail     text,
    at         timestamptz NOT NULL,
    PRIMARY KEY (saga_id, seq)
);

-- Messages written with the transition that caused them and relayed to the
-- broker after commit; a row is deleted only once the broker took it.
CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,     -- relay order
    channel       text        NOT NULL,
    message       jsonb       NOT NULL,        -- the envelope, traceparent included
    created_at    timestamptz NOT NULL DEFAULT now(),
    claimed_by    text,                        -- relay instance publishing it now ...
    claimed_until timestamptz                  -- ... until then; after that another may
);
