-- Dead-letter replay runs only the handlers that did not succeed for the event
-- (issue 20 item 2): `handlers_succeeded` holds the indexes of the subscription's
-- registrations that had already succeeded when the event became a dead letter;
-- `replay_all_handlers` is set when an operator asks to run every handler again.
ALTER TABLE dead_letters ADD COLUMN handlers_succeeded integer[] NOT NULL DEFAULT '{}';
ALTER TABLE dead_letters ADD COLUMN replay_all_handlers boolean NOT NULL DEFAULT false;
