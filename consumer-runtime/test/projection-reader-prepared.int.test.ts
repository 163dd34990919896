/**
 * The history page is a named prepared statement (issue 16), kept on each connection
 * for its life. A rebuild's switch moves the live tables away and the rebuilt ones in
 * (`ALTER TABLE … SET SCHEMA`, as `rebuild.ts` does): a connection that prepared the
 * statement before the switch must read the rebuilt tables after it.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestSchema, type TestSchema } from "../../test/support/isolation.ts";
import { createProjectionReader } from "../src/materialiser/projection-reader.ts";

let live: TestSchema;
let rebuilt: TestSchema;
/** One connection, so that every read uses the statement it prepared. */
let single: pg.Pool;

/** A conversation of three messages whose texts say which projection they are in. */
async function fill(db: TestSchema, which: string): Promise<void> {
  await db.pool.query(
    `INSERT INTO conversations (conversation_id, kind, created_by, created_at, created_event_id, partition, last_seq, last_activity_at)
     VALUES ('c', 'group', 'ana', now(), 'created', 0, 3, now())`,
  );
  await db.pool.query(
    `INSERT INTO members (conversation_id, user_id, role, joined_at, joined_offset) VALUES ('c', 'ana', 'owner', now(), 0)`,
  );
  await db.pool.query(
    `INSERT INTO messages (conversation_id, seq, event_id, sender_id, content, priority, sent_at, materialised_at, partition, "offset")
     SELECT 'c', s, $1 || s, 'ana', jsonb_build_object('type', 'text', 'text', $1 || s), 'high', now(), now(), 0, s
       FROM generate_series(1, 3) s`,
    [which],
  );
}

beforeAll(async () => {
  [live, rebuilt] = await Promise.all([createTestSchema("reader_live"), createTestSchema("reader_rebuilt")]);
  await Promise.all([fill(live, "live-"), fill(rebuilt, "rebuilt-")]);
  single = new pg.Pool({ connectionString: live.url, max: 1 });
});

afterAll(async () => {
  await single?.end();
  // One after the other: after the switch each schema's tables reference the other's.
  await live?.cleanup();
  await rebuilt?.cleanup();
});

describe("the history page's prepared statement", () => {
  it("reads the rebuilt tables after a switch on a connection that prepared it before", async () => {
    const reader = createProjectionReader(single);
    const texts = async () =>
      (await reader.historyPage("c", { limit: 50 })).messages.map(
        (m) => (JSON.parse(m.json) as { content: { text: string } }).content.text,
      );
    // More than five runs: PostgreSQL may then keep a generic plan for the statement.
    for (let i = 0; i < 7; i++) expect(await texts()).toEqual(["live-1", "live-2", "live-3"]);

    const swap = `${live.schema}_swap`;
    const admin = await live.pool.connect();
    try {
      await admin.query("BEGIN");
      await admin.query(`CREATE SCHEMA "${swap}"`);
      for (const table of ["conversations", "members", "messages"]) {
        await admin.query(`ALTER TABLE "${live.schema}".${table} SET SCHEMA "${swap}"`);
        await admin.query(`ALTER TABLE "${rebuilt.schema}".${table} SET SCHEMA "${live.schema}"`);
        await admin.query(`ALTER TABLE "${swap}".${table} SET SCHEMA "${rebuilt.schema}"`);
      }
      await admin.query(`DROP SCHEMA "${swap}"`);
      await admin.query("COMMIT");
    } finally {
      admin.release();
    }

    expect(await texts()).toEqual(["rebuilt-1", "rebuilt-2", "rebuilt-3"]);
  });
});
