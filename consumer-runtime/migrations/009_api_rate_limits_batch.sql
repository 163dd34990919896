-- Group commit for the shared write limits (issue 16, issue 18 item 3; docs/decisions.md
-- "Rate limits across API processes"): one call decides a batch of writes that arrived
-- in one API process while its previous call was in flight, instead of one round trip
-- (and one lock of the same hot user or conversation row) per write.
--
-- Arguments, for a batch of writes numbered 1..n in arrival order:
--   keys, rates, capacities: the batch's distinct buckets (each once);
--   requests, slots, needed: one entry per (write, bucket), grouped by write in
--     arrival order: the write's number, the bucket's position in `keys`, and what the
--     bucket must hold for that write to pass (as in chatbus_take_tokens).
-- Returns one row per write: `wait` 0 when it passed (it took one token from each of
-- its buckets), else the seconds until all of them would have enough and `short`, the
-- buckets that had too few (it took none). Each write is decided exactly as
-- chatbus_take_tokens would decide it if called once per write in that order at the
-- same instant: all-or-none per write, later writes see what earlier ones took.
--
-- Locks: every bucket of the batch is locked first, in byte order of the key
-- (COLLATE "C", the order in which chatbus_take_tokens' callers sort), so batches of
-- different processes and single calls of 006's function never wait in a cycle.
-- chatbus_take_tokens (006) stays: API processes of the previous release call it
-- during a rolling upgrade, on the same rows.
CREATE FUNCTION chatbus_take_tokens_batch(
  keys text[],
  rates double precision[],
  capacities double precision[],
  requests integer[],
  slots integer[],
  needed double precision[]
) RETURNS TABLE (request integer, wait double precision, short text[])
LANGUAGE plpgsql AS $$
DECLARE
  now_at timestamptz := clock_timestamp();
  have double precision[];
  entries integer := coalesce(array_length(slots, 1), 0);
  i integer := 1;
  j integer;
  k integer;
  s integer;
BEGIN
  INSERT INTO api_rate_buckets (key, tokens, updated_at)
    SELECT u.key, u.capacity, now_at FROM unnest(keys, capacities) AS u(key, capacity)
     ORDER BY u.key COLLATE "C"
    ON CONFLICT (key) DO NOTHING;
  PERFORM 1 FROM api_rate_buckets b WHERE b.key = ANY (keys) ORDER BY b.key COLLATE "C" FOR UPDATE;
  -- The time once the rows are ours: a writer we waited for may have stamped them later
  -- than our start, and refilling from an earlier time would hand out tokens twice.
  now_at := clock_timestamp();
  -- The rows are ours until the end of the statement that called us: refill them once.
  SELECT array_agg(
           least(u.capacity, b.tokens + greatest(0, extract(epoch FROM now_at - b.updated_at)) * u.rate)
           ORDER BY u.slot)
    INTO have
    FROM unnest(keys, rates, capacities) WITH ORDINALITY AS u(key, rate, capacity, slot)
    JOIN api_rate_buckets b ON b.key = u.key;
  WHILE i <= entries LOOP
    request := requests[i];
    wait := 0;
    short := '{}';
    j := i;
    WHILE j <= entries AND requests[j] = request LOOP
      s := slots[j];
      IF have[s] < needed[j] THEN
        wait := greatest(wait, (needed[j] - have[s]) / rates[s]);
        short := short || keys[s];
      END IF;
      j := j + 1;
    END LOOP;
    IF wait = 0 THEN
      FOR k IN i .. j - 1 LOOP
        have[slots[k]] := have[slots[k]] - 1;
      END LOOP;
    END IF;
    RETURN NEXT;
    i := j;
  END LOOP;
  UPDATE api_rate_buckets b SET tokens = u.tokens, updated_at = now_at
    FROM unnest(keys, have) AS u(key, tokens)
   WHERE b.key = u.key;
END
$$;
