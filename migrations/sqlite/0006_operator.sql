-- Dead letters, operator audit and bulk jobs: see
-- migrations/postgres/0006_operator.sql for what each table is for. Here
-- times are INTEGER microseconds and ids TEXT, as in the other tables.

CREATE TABLE dead_letters (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE,
    channel        TEXT    NOT NULL,
    message_id     TEXT    NOT NULL,
    source_channel TEXT    NOT NULL,
    dlq_reason     TEXT    NOT NULL,
    failed_at      INTEGER NOT NULL,
    raw            TEXT    NOT NULL,
    state          TEXT    NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'redriving', 'redriven', 'discarded')),
    acted_by       TEXT,
    action_reason  TEXT,
    acted_at       INTEGER,
    job_id         TEXT,
    indexed_at     INTEGER NOT NULL
);
CREATE INDEX dead_letters_pending_idx ON dead_letters (seq DESC) WHERE state = 'pending';
CREATE INDEX dead_letters_redriving_idx ON dead_letters (acted_at) WHERE state = 'redriving';

CREATE TABLE operator_audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT    NOT NULL,
    reason  TEXT    NOT NULL,
    detail  TEXT
);

CREATE TABLE jobs (
    job_id      TEXT    PRIMARY KEY,
    body_key    TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL CHECK (kind IN ('saga_retry', 'dead_letter_redrive')),
    name        TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('running', 'done', 'aborted', 'failed')),
    matched     INTEGER NOT NULL CHECK (matched >= 0),
    done        INTEGER NOT NULL DEFAULT 0,
    skipped     INTEGER NOT NULL DEFAULT 0,
    errors      INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until INTEGER
);
CREATE INDEX jobs_running_idx ON jobs (created_at) WHERE state = 'running';

CREATE TABLE job_items (
    job_id  TEXT    NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    target  TEXT    NOT NULL,
    outcome TEXT    CHECK (outcome IN ('done', 'skipped', 'error')),
    detail  TEXT,
    PRIMARY KEY (job_id, seq)
);
