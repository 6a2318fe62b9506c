-- At most one saga per partner that is not `compensated`: see
-- migrations/postgres/0003_one_saga_per_partner.sql. (SQLite cannot raise a
-- custom message here: with clashing rows the index creation itself fails.)
CREATE UNIQUE INDEX sagas_one_per_partner ON sagas (partner_id) WHERE state <> 'compensated';

-- Compensations in progress get the default compensation window from now
-- (times are microseconds since the epoch): see the PostgreSQL migration.
UPDATE sagas
SET deadline_at = max(deadline_at, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER) + 300000000)
WHERE state = 'compensating';
