/**
 * The rows the materialiser rewrites in every batch (a conversation's last_seq and times,
 * its senders' member rows) are updated HOT: their pages keep room for the new version
 * (migration 011), so an update writes no index entries. Counted with PostgreSQL's
 * per-transaction statistics, which need no flush and see only this transaction.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestSchema, type TestSchema } from "../../test/support/isolation.ts";

const ROWS = 3_000;
let db: TestSchema;

beforeAll(async () => {
  db = await createTestSchema("proj_hot");
  // Inserted densely in one statement, as a batch of creations would.
  await db.pool.query(
    `INSERT INTO conversations (conversation_id, kind, created_by, created_at, created_event_id, partition, last_seq, last_activity_at)
     SELECT 'c' || g, 'group', 'u0', now(), 'created-' || g, 0, 0, now() FROM generate_series(1, $1::int) g`,
    [ROWS],
  );
  await db.pool.query(
    `INSERT INTO members (conversation_id, user_id, role, joined_at, joined_offset, joined_seq)
     SELECT 'c' || g, 'u' || (g % 3), CASE WHEN g % 3 = 0 THEN 'owner' ELSE 'member' END, now(), g, 0
       FROM generate_series(1, $1::int) g`,
    [ROWS],
  );
});

afterAll(async () => {
  await db?.cleanup();
});

/** Updates a tenth of the table's rows (spread over every page) per transaction, three times; HOT and all updates. */
async function updateRounds(table: string, set: string, key: string): Promise<{ hot: number; all: number }> {
  const client = await db.pool.connect();
  // The counters hold the backend's updates not yet flushed to the shared statistics
  // (flushes happen between transactions), so each round counts its difference.
  const counts = async () => {
    const { rows } = await client.query<{ hot: string; all: string }>(
      `SELECT pg_stat_get_xact_tuples_hot_updated($1::regclass) AS hot,
              pg_stat_get_xact_tuples_updated($1::regclass) AS all`,
      [table],
    );
    return { hot: Number(rows[0]!.hot), all: Number(rows[0]!.all) };
  };
  let hot = 0;
  let all = 0;
  try {
    for (let round = 0; round < 3; round++) {
      await client.query("BEGIN");
      const before = await counts();
      await client.query(`UPDATE ${table} SET ${set} WHERE substr(${key}, 2)::int % 10 = $1`, [round]);
      const after = await counts();
      await client.query("COMMIT");
      hot += after.hot - before.hot;
      all += after.all - before.all;
    }
  } finally {
    client.release();
  }
  return { hot, all };
}

describe("rows the materialiser rewrites per batch", () => {
  it("are updated HOT in members (no index entries per update)", async () => {
    const { hot, all } = await updateRounds(
      "members",
      "last_delivered_seq = last_delivered_seq + 1, own_after_read = own_after_read + 1",
      "conversation_id",
    );
    expect(all).toBe((ROWS / 10) * 3);
    expect(hot / all).toBeGreaterThanOrEqual(0.95);
  });

  it("are updated HOT in conversations", async () => {
    const { hot, all } = await updateRounds(
      "conversations",
      "last_seq = last_seq + 1, last_message_at = now()",
      "conversation_id",
    );
    expect(all).toBe((ROWS / 10) * 3);
    expect(hot / all).toBeGreaterThanOrEqual(0.95);
  });
});
