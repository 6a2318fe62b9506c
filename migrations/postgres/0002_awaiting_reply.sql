-- Broker mode (ALIANZAS_MODE / INTEGRACIONES_MODE = broker): a saga whose
-- command is out waits for the participant's reply until next_attempt_at.
-- The flag tells that wait (reply deadline) from a retry's backoff.
ALTER TABLE sagas ADD COLUMN awaiting_reply boolean NOT NULL DEFAULT false;
