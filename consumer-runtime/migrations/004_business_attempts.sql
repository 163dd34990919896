-- Business-retry attempt counts per (subscription, record, handler), kept in PostgreSQL
-- rather than in memory so that a rebalance or restart that redelivers the record
-- does not reset them: an event that keeps failing reaches its dead-letter limit
-- (issue 20 item 4). `handler` is the registration's index in the subscription
-- (registration order; stable for one deployment). Rows are deleted when the event
-- succeeds or becomes a dead letter.
CREATE TABLE business_attempts (
  subscription text        NOT NULL,
  topic        text        NOT NULL,
  partition    integer     NOT NULL,
  "offset"     bigint      NOT NULL,
  handler      integer     NOT NULL,
  failures     integer     NOT NULL,
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (subscription, topic, partition, "offset", handler)
);
