/**
 * The batch load reads only what the batch's keys point at, also while the tables'
 * statistics are stale (a fresh projection, a rebuild): no sequential scan of a
 * projection table, whose cost would grow with the table on every batch.
 */
import type { ChatEvent } from "@chatbus/producer-sdk";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestSchema, type TestSchema } from "../../test/support/isolation.ts";
import { loadBatchState } from "../src/materialiser/projection-loader.ts";

const ROWS = 20_000;
let db: TestSchema;

beforeAll(async () => {
  db = await createTestSchema("mat_load");
  // Rows written moments ago, never analysed: what a rebuild's fresh schema looks like.
  await db.pool.query(
    `INSERT INTO conversations (conversation_id, kind, created_by, created_at, created_event_id, partition, last_seq, last_activity_at)
     SELECT 'c' || g, 'group', 'u0', now(), 'created-' || g, 0, 1, now() FROM generate_series(1, $1::int) g`,
    [ROWS],
  );
  await db.pool.query(
    `INSERT INTO members (conversation_id, user_id, role, joined_at, joined_offset, joined_seq)
     SELECT 'c' || g, 'u0', 'owner', now(), g, 0 FROM generate_series(1, $1::int) g`,
    [ROWS],
  );
  await db.pool.query(
    `INSERT INTO messages (conversation_id, seq, event_id, sender_id, client_msg_id, content, priority, sent_at, materialised_at, partition, "offset")
     SELECT 'c' || g, 1, 'm' || g, 'u0', 'k' || g, '{"type":"text","text":"hi"}', 'normal', now(), now(), 0, g
       FROM generate_series(1, $1::int) g`,
    [ROWS],
  );
  await db.pool.query(
    `INSERT INTO event_log (partition, "offset", conversation_id, event_id, type, payload, event_time, materialised_at)
     SELECT 0, g, 'c' || g, 'm' || g, 'chat.message.sent', '{}', now(), now() FROM generate_series(1, $1::int) g`,
    [ROWS],
  );
});

afterAll(async () => {
  await db?.cleanup();
});

describe("loadBatchState", () => {
  it("looks up a batch of 500 by index, without scanning any projection table", async () => {
    const events = Array.from(
      { length: 500 },
      (_, i) =>
        ({
          id: `new-${i}`,
          type: "chat.message.sent",
          conversationId: `c${i * 7 + 1}`,
          time: new Date(),
          data: { senderId: "u0", clientMsgId: `k${i * 7 + 1}`, content: { type: "text", text: "x" } },
        }) as unknown as ChatEvent,
    );
    // A leave reads the conversation's active owners, a repeated creation its direct members.
    for (let i = 0; i < 20; i++)
      events.push(
        {
          id: `left-${i}`,
          type: "chat.member.left",
          conversationId: `c${i * 7 + 1}`,
          time: new Date(),
          data: { userId: "u0" },
        } as unknown as ChatEvent,
        {
          id: `created-${i}`,
          type: "chat.conversation.created",
          conversationId: `c${i * 7 + 1}`,
          time: new Date(),
          data: { kind: "direct", createdBy: "u0", members: ["u0", "u9"] },
        } as unknown as ChatEvent,
      );
    const client = await db.pool.connect();
    try {
      const plans: string[] = [];
      // Plans the load's own statement (with its values) before running it.
      const explaining = {
        query: async (config: pg.QueryConfig) => {
          const { rows } = await client.query({
            text: `EXPLAIN ${config.text}`,
            values: config.values,
          });
          plans.push(rows.map((r) => r["QUERY PLAN"]).join("\n"));
          return client.query(config);
        },
      } as unknown as pg.PoolClient;
      const { state } = await loadBatchState(explaining, "t", [0], events);
      expect(plans).toHaveLength(1);
      expect(plans[0]).not.toContain("Seq Scan");
      // 500 conversations, the members the events name (each conversation's u0), the clientMsgId repeats.
      expect(state.conversations.size).toBe(500);
      expect([...state.membersOf.values()].flat()).toHaveLength(500);
      expect(state.messages.size).toBe(500);
    } finally {
      client.release();
    }
  });
});
