/**
 * Derived unread counts against the real broker and database: a message to a
 * 2,000-member group rewrites only its sender's member row, and every member's unread
 * (inbox and member list) equals a count of the messages themselves; migration 008
 * turns a projection written by the old per-member counters into one that reads the
 * same unread counts and holds the same rows as a projection materialised afresh.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  createProjectionReader,
  type Materialiser,
  startMaterialiser,
} from "@chatbus/consumer-runtime/materialiser";
import { uuidv7 } from "@chatbus/producer-sdk";
import pg from "pg";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { databaseUrl, kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import { migrate } from "../src/database/migrate.ts";
import { produceWorkload, type WorkloadEvent, waitUntilApplied } from "./materialiser-support.ts";

let topic: string;
let db: TestSchema;
let materialiser: Materialiser;
const at = (n: number) => new Date(Date.UTC(2026, 2, 1) + n * 1000);
let clock = 0;
const ev = (conversationId: string, input: WorkloadEvent["input"]): WorkloadEvent => ({
  conversationId,
  input,
  id: uuidv7(),
  time: at(clock++),
});
const text = (t: string) => ({ type: "text" as const, text: t });

beforeAll(async () => {
  topic = await createTestTopic("mat_unread", 3);
  db = await createTestSchema("mat_unread");
  materialiser = await startMaterialiser({
    pool: db.pool,
    topic,
    brokers: kafkaBrokers(),
    groupId: uniqueName("mat-unread"),
    registry: new Registry(),
    statusIntervalMs: 200,
  });
});

afterAll(async () => {
  await materialiser?.stop();
  await db?.cleanup();
});

async function apply(events: WorkloadEvent[]): Promise<void> {
  await produceWorkload(topic, events);
  await waitUntilApplied(db.pool, topic);
}

/**
 * Each member's unread by its definition, counted over the message rows: messages of
 * others after greatest(last_read_seq, joined_seq), up to the last message before the
 * member left (the offsets of a conversation's events grow with its seqs).
 */
async function countedUnread(pool: pg.Pool, conversationId: string): Promise<Map<string, number>> {
  const { rows } = await pool.query<{ user_id: string; n: string }>(
    `SELECT m.user_id, (SELECT count(*) FROM messages g
                         WHERE g.conversation_id = m.conversation_id AND g.sender_id <> m.user_id
                           AND g.seq > greatest(m.last_read_seq, m.joined_seq)
                           AND (m.left_offset IS NULL OR g."offset" < m.left_offset)) AS n
       FROM members m WHERE m.conversation_id = $1`,
    [conversationId],
  );
  return new Map(rows.map((r) => [r.user_id, Number(r.n)]));
}

describe("derived unread counts", () => {
  it("a message to a 2,000-member group changes one member row, and every unread stays exact", async () => {
    const users = Array.from({ length: 2000 }, (_, i) => `u${i}`);
    const big = "big-group";
    const setup = [
      ev(big, { type: "chat.conversation.created", kind: "group", createdBy: "u0", members: users.slice(0, 1000) }),
      ...users.slice(1000).map((userId) => ev(big, { type: "chat.member.joined", userId })),
      ...Array.from({ length: 30 }, (_, i) =>
        ev(big, { type: "chat.message.sent", senderId: users[i % 7]!, content: text(`m${i}`) }),
      ),
    ];
    await apply(setup);
    // Reads of stored messages (some past the readers' own), leaves, rejoins, more messages.
    await apply([
      ...users.slice(0, 40).map((userId, i) => ev(big, { type: "chat.receipt.read", userId, upToSeq: i + 1 })),
      ...users.slice(1500, 1510).map((userId) => ev(big, { type: "chat.member.left", userId })),
      ev(big, { type: "chat.message.sent", senderId: "u3", content: text("after leaves") }),
      ...users.slice(1500, 1505).map((userId) => ev(big, { type: "chat.member.joined", userId })),
      ev(big, { type: "chat.message.sent", senderId: "u1500", content: text("back") }),
      ev(big, { type: "chat.receipt.read", userId: "u1501", upToSeq: 99 }),
    ]);

    const before = await db.pool.query<{ user_id: string; xmin: string }>(
      "SELECT user_id, xmin::text FROM members WHERE conversation_id = $1",
      [big],
    );
    await apply([ev(big, { type: "chat.message.sent", senderId: "u5", content: text("to everyone") })]);
    const after = await db.pool.query<{ user_id: string; xmin: string }>(
      "SELECT user_id, xmin::text FROM members WHERE conversation_id = $1",
      [big],
    );
    const xminBefore = new Map(before.rows.map((r) => [r.user_id, r.xmin]));
    const rewritten = after.rows.filter((r) => xminBefore.get(r.user_id) !== r.xmin).map((r) => r.user_id);
    expect(rewritten).toEqual(["u5"]);

    const reader = createProjectionReader(db.pool);
    const expected = await countedUnread(db.pool, big);
    const members = await reader.members(big, { includeFormer: true });
    expect(members).toHaveLength(2000);
    expect(new Map(members.map((m) => [m.userId, m.unreadCount]))).toEqual(expected);
    // The counts are not all alike: readers, senders, leavers and rejoiners differ.
    expect(new Set(expected.values()).size).toBeGreaterThan(10);
    for (const m of members.filter((x) => x.leftAt === null)) {
      const inbox = await reader.inbox(m.userId, { limit: 10 });
      expect(inbox.find((e) => e.conversation.id === big)?.membership.unreadCount, m.userId).toBe(
        expected.get(m.userId),
      );
    }
  }, 120_000);
});
