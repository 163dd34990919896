-- Placeholder replaced by the consumer runtime issue: kept so the runner has a file to apply.
CREATE TABLE IF NOT EXISTS chatbus_instances (
  instance_id text PRIMARY KEY,
  started_at timestamptz NOT NULL DEFAULT now()
);
