-- Presence across API processes (issue 18.2): which process holds open SSE streams of
-- which user, and each user's announced state. A process that stops writing its
-- heartbeat counts as gone, so a killed process does not keep its users online.
CREATE TABLE api_processes (
  process_id   text        PRIMARY KEY,
  heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- A row while the process has at least one open stream of the user.
CREATE TABLE presence_streams (
  user_id    text NOT NULL,
  process_id text NOT NULL REFERENCES api_processes (process_id) ON DELETE CASCADE,
  PRIMARY KEY (user_id, process_id)
);
CREATE INDEX presence_streams_by_process ON presence_streams (process_id);

-- The last announced state: one announcement per transition, whichever process sees it.
CREATE TABLE presence (
  user_id        text        PRIMARY KEY,
  online         boolean     NOT NULL,
  changed_at     timestamptz NOT NULL,
  -- When a process last closed the user's last stream there (the grace runs from it).
  last_closed_at timestamptz
);
CREATE INDEX presence_online ON presence (user_id) WHERE online;
