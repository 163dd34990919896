-- Operator skips: `chatbus subscriptions skip <subscription> <partition> <offset>`
-- (or POST /v1/subscriptions/:subscription/skip) asks the instance that owns the
-- partition to turn the record it keeps retrying into a dead letter of class
-- `operator`. The instance polls this table with its status publish and marks the
-- request applied (with the dead letter it wrote) once the partition has moved on.
CREATE TABLE subscription_skips (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  subscription  text        NOT NULL,
  topic         text        NOT NULL,
  partition     integer     NOT NULL,
  "offset"      bigint      NOT NULL,
  requested_by  text        NOT NULL,
  requested_at  timestamptz NOT NULL DEFAULT now(),
  applied_at    timestamptz,
  applied_by    text,
  dead_letter_id bigint REFERENCES dead_letters (id),
  UNIQUE (subscription, topic, partition, "offset")
);
CREATE INDEX subscription_skips_pending ON subscription_skips (subscription) WHERE applied_at IS NULL;
