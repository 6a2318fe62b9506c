-- At most one saga per partner that is not `compensated`: see
-- migrations/postgres/0003_one_saga_per_partner.sql. (SQLite cannot raise a
-- custom message here: with clashing rows the index creation itself fails.)
CREATE UNIQUE INDEX sagas_one_per_partner ON sagas (partner_id) WHERE state <> 'compensated';
