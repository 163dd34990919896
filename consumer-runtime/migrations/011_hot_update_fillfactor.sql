-- Issue 12: the materialiser rewrites a conversation's row (last_seq, times) and its
-- senders' member rows (own_after_read) in every batch that carries their messages. Packed
-- full (fillfactor 100), a page has no room for a row's new version, so the update cannot
-- be HOT: it writes a new entry into each of the table's indexes (members has three) and
-- about twice the WAL. With 30 % of each page kept free the new version stays on its
-- page; measured with bench/materialiser/apply-cpu.ts --explain, members' update fell from
-- 195 to 84 WAL bytes per event (docs/benchmarks.md, docs/decisions.md).
-- Applies to pages written from now on; existing pages keep their fill until rewritten
-- (VACUUM FULL, or a projection rebuild, which migrates a fresh schema).
ALTER TABLE members SET (fillfactor = 70);
ALTER TABLE conversations SET (fillfactor = 70);
