-- What operators see and do beyond single sagas (docs/contract.md §5,
-- "Operator routes"): dead letters, what was done with them, bulk jobs,
-- and an audit record of every operator action.

-- Dead letters, as read from the `<channel>-dlq` channels by the service's
-- own subscription on them (src/operator/index.rs). The broker keeps the
-- letter; this table indexes it so the API can filter and page it, and
-- records what was done with it: a Pulsar topic cannot delete one entry,
-- so a handled letter leaves the listing here, not on the broker.
CREATE TABLE dead_letters (
    seq            bigserial   PRIMARY KEY,         -- order of indexing: the paging cursor
    id             text        NOT NULL UNIQUE,     -- the API's id: channel + broker message id, URL-safe
    channel        text        NOT NULL,            -- the dead-letter channel, `<source>-dlq`
    message_id     text        NOT NULL,            -- the broker's id of the entry on `channel`
    source_channel text        NOT NULL,            -- where a redrive sends it back
    dlq_reason     text        NOT NULL,
    failed_at      timestamptz NOT NULL,
    raw            text        NOT NULL,            -- the entry as read, as JSON text (NUL escaped)
    state          text        NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'redriving', 'redriven', 'discarded')),
    acted_by       text,                            -- the admin token's name that acted on it
    action_reason  text,
    acted_at       timestamptz,
    job_id         uuid,                            -- the bulk job that acted on it, if one did
    indexed_at     timestamptz NOT NULL
);
-- The listing shows pending letters only, newest first, per channel or all.
CREATE INDEX dead_letters_pending_idx ON dead_letters (seq DESC) WHERE state = 'pending';
-- A redrive interrupted between its record and its publish is finished later.
CREATE INDEX dead_letters_redriving_idx ON dead_letters (acted_at) WHERE state = 'redriving';

-- Every operator action on dead letters and jobs: who (the admin token's
-- name), what, on what, and why. Actions on one saga are in its history.
CREATE TABLE operator_audit (
    seq     bigserial   PRIMARY KEY,
    at      timestamptz NOT NULL,
    actor   text        NOT NULL,
    action  text        NOT NULL,   -- e.g. dead_letter.redrive, job.start, job.abort
    target  text        NOT NULL,   -- a dead-letter id or a job id
    reason  text        NOT NULL,
    detail  text                    -- JSON text: what else the action said (a job's body…)
);

-- Bulk jobs: chosen by filter, bounded, run in the background by one
-- instance at a time (a lease), resumable, idempotent by their body.
CREATE TABLE jobs (
    job_id      uuid        PRIMARY KEY,
    body_key    text        NOT NULL UNIQUE,   -- SHA-256 of the normalized body: the same body is one job
    kind        text        NOT NULL CHECK (kind IN ('saga_retry', 'dead_letter_redrive')),
    name        text        NOT NULL,
    reason      text        NOT NULL,
    actor       text        NOT NULL,
    body        text        NOT NULL,          -- the normalized body, JSON text
    state       text        NOT NULL CHECK (state IN ('running', 'done', 'aborted', 'failed')),
    matched     integer     NOT NULL CHECK (matched >= 0),
    done        integer     NOT NULL DEFAULT 0,
    skipped     integer     NOT NULL DEFAULT 0,
    errors      integer     NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    lease_owner text,                          -- the instance running it now
    lease_until timestamptz
);
CREATE INDEX jobs_running_idx ON jobs (created_at) WHERE state = 'running';

-- A job's targets, fixed when it starts (so a restart resumes the same
-- set), each settled once.
CREATE TABLE job_items (
    job_id  uuid    NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    seq     integer NOT NULL,
    target  text    NOT NULL,                  -- a saga id or a dead-letter id
    outcome text    CHECK (outcome IN ('done', 'skipped', 'error')),  -- NULL: still to do
    detail  text,
    PRIMARY KEY (job_id, seq)
);
