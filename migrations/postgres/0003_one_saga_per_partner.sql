-- At most one saga per partner that is not `compensated` (CONTRACT §1).
--
-- Dedup by event_id alone let a second event for the same partner (a client
-- retrying POST /sagas without an event_id, integrations republishing under
-- a new id) start a second saga with other idempotency keys, whose
-- compensation could then delete a partner the first saga had completed.
-- With this index a second start finds the partner's live, completed or
-- failed saga and is answered with it. A compensated saga no longer counts:
-- its partner was deleted, and a partner created again under the same id
-- gets a saga of its own.
DO $$
DECLARE
    clashes bigint;
BEGIN
    SELECT count(*) INTO clashes FROM (
        SELECT partner_id FROM sagas WHERE state <> 'compensated'
        GROUP BY partner_id HAVING count(*) > 1
    ) AS dup;
    IF clashes > 0 THEN
        RAISE EXCEPTION 'migration 0003: % partner(s) have more than one saga that is not compensated; '
            'resolve them first (SELECT partner_id, array_agg(saga_id) FROM sagas '
            'WHERE state <> ''compensated'' GROUP BY partner_id HAVING count(*) > 1)', clashes;
    END IF;
END
$$;

CREATE UNIQUE INDEX sagas_one_per_partner ON sagas (partner_id) WHERE state <> 'compensated';

-- Compensation now has a deadline of its own, kept in deadline_at from the
-- moment it begins (COMPENSATION_DEADLINE_SECS, default 300 s). Sagas that
-- were compensating before this migration still hold their forward
-- deadline, usually past: without this they would be parked as failed
-- without one more delete attempt. They get the default window from now.
UPDATE sagas SET deadline_at = greatest(deadline_at, now() + interval '300 seconds')
WHERE state = 'compensating';
