-- Consumer runtime: dead letters and the status each running subscription publishes.

CREATE TABLE dead_letters (
  id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  subscription    text        NOT NULL,
  topic           text        NOT NULL,
  partition       integer     NOT NULL,
  "offset"        bigint      NOT NULL,
  record_key      text,
  headers         jsonb       NOT NULL DEFAULT '{}',
  -- The raw value, so that undecodable records are kept byte for byte.
  value           bytea,
  event_id        text,
  event_type      text,
  conversation_id text,
  -- poison | business | system (system only when a subscription set a maximum)
  failure_class   text        NOT NULL,
  error_code      text        NOT NULL,
  error_message   text        NOT NULL,
  error_stack     text,
  attempts        integer     NOT NULL,
  first_failed_at timestamptz NOT NULL,
  last_failed_at  timestamptz NOT NULL,
  status          text        NOT NULL DEFAULT 'waiting' CHECK (status IN ('waiting', 'replaying', 'replayed', 'discarded')),
  status_changed_at timestamptz,
  status_changed_by text,
  -- Why it was discarded (or the note given with a replay).
  status_reason   text,
  -- Replay bookkeeping: how often it was replayed, the last replay's error, and which
  -- runtime instance holds a 'replaying' row right now (claims expire, see the runtime).
  replay_count    integer     NOT NULL DEFAULT 0,
  last_replay_error text,
  claimed_by      text,
  claimed_at      timestamptz,
  created_at      timestamptz NOT NULL DEFAULT now(),
  -- One dead letter per record and subscription: a redelivered poison record is not stored twice.
  UNIQUE (subscription, topic, partition, "offset")
);
CREATE INDEX dead_letters_by_subscription_status ON dead_letters (subscription, status, id);

CREATE TABLE subscription_status (
  subscription  text        NOT NULL,
  instance_id   text        NOT NULL,
  state         jsonb       NOT NULL,
  last_seen_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (subscription, instance_id)
);
