-- Write rate limits shared by every API process (issue 18 item 3; docs/decisions.md
-- "Rate limits across API processes"). One token bucket per key, e.g.
-- `user:ana:messages` or `conversation:g-1:messages`.
--
-- UNLOGGED: no WAL for a row that changes on every write; after a PostgreSQL crash
-- the table comes back empty, which only means every bucket starts full again.
CREATE UNLOGGED TABLE api_rate_buckets (
  key        text             PRIMARY KEY,
  tokens     double precision NOT NULL,
  updated_at timestamptz      NOT NULL
) WITH (fillfactor = 70); -- room on the page so that the constant updates stay HOT

-- Takes one token from every bucket named in `keys`, or from none of them: `wait` is 0
-- when taken, else the seconds until all of them would have enough, and `short` names
-- the buckets that had too few (for the 429's message). `needed` is what a
-- bucket must hold for the write to pass (1, or more for low-priority messages, which
-- may not use the reserve). Rows are locked in the order given, which callers sort,
-- so that two writers never wait on each other in a cycle.
CREATE FUNCTION chatbus_take_tokens(
  keys text[],
  rates double precision[],
  capacities double precision[],
  needed double precision[]
) RETURNS TABLE (wait double precision, short text[])
LANGUAGE plpgsql AS $$
DECLARE
  now_at timestamptz := clock_timestamp();
  available double precision[] := '{}';
  have double precision;
  i integer;
BEGIN
  wait := 0;
  short := '{}';
  FOR i IN 1 .. coalesce(array_length(keys, 1), 0) LOOP
    INSERT INTO api_rate_buckets (key, tokens, updated_at) VALUES (keys[i], capacities[i], now_at)
      ON CONFLICT (key) DO NOTHING;
    SELECT least(capacities[i], b.tokens + greatest(0, extract(epoch FROM now_at - b.updated_at)) * rates[i])
      INTO have FROM api_rate_buckets b WHERE b.key = keys[i] FOR UPDATE;
    available[i] := have;
    IF have < needed[i] THEN
      wait := greatest(wait, (needed[i] - have) / rates[i]);
      short := short || keys[i];
    END IF;
  END LOOP;
  FOR i IN 1 .. coalesce(array_length(keys, 1), 0) LOOP
    UPDATE api_rate_buckets
       SET tokens = CASE WHEN wait = 0 THEN available[i] - 1 ELSE available[i] END, updated_at = now_at
     WHERE key = keys[i];
  END LOOP;
  RETURN NEXT;
END
$$;
