/**
 * Derived unread counts against the real broker and database: a message to a
 * 2,000-member group rewrites only its sender's member row, and every member's unread
 * (inbox and member list) equals a count of the messages themselves; migration 008
 * turns a projection written by the old per-member counters into one that reads the
 * same unread counts and holds the same rows as a projection materialised afresh.
 */
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
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
import { prng, produceWorkload, type WorkloadEvent, waitUntilApplied } from "./materialiser-support.ts";

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
      ev(big, {
        type: "chat.conversation.created",
        kind: "group",
        createdBy: "u0",
        members: users.slice(0, 1000),
      }),
      ...users.slice(1000).map((userId) => ev(big, { type: "chat.member.joined", userId })),
      ...Array.from({ length: 30 }, (_, i) =>
        ev(big, { type: "chat.message.sent", senderId: users[i % 7]!, content: text(`m${i}`) }),
      ),
    ];
    await apply(setup);
    // Reads of stored messages (some past the readers' own), leaves, rejoins, more messages.
    await apply([
      ...users
        .slice(0, 40)
        .map((userId, i) => ev(big, { type: "chat.receipt.read", userId, upToSeq: i + 1 })),
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

  it("migration 008 keeps the unread counts of a projection written by the old per-member counters", async () => {
    const events = scenario("mig", 4, 400);
    const old = oldProjection(events);
    const legacy = await legacySchema();
    try {
      await insertOldProjection(legacy.pool, old);
      const before = await legacy.pool.query<{
        conversation_id: string;
        user_id: string;
        unread_count: number;
      }>("SELECT conversation_id, user_id, unread_count FROM members ORDER BY 1, 2");
      expect(before.rows.some((r) => r.unread_count > 0)).toBe(true);
      // Later migrations (009, 010, …) run too; 008 is the one this legacy schema lacked.
      expect((await migrate(legacy.pool)).applied[0]).toBe("008_derived_unread.sql");
      const readBack = async (pool: pg.Pool) => {
        const reader = createProjectionReader(pool);
        const out: { conversation_id: string; user_id: string; unread_count: number }[] = [];
        for (const id of old.conversations.keys())
          for (const m of await reader.members(id, { includeFormer: true }))
            out.push({ conversation_id: id, user_id: m.userId, unread_count: m.unreadCount });
        return out.sort((a, b) =>
          a.conversation_id === b.conversation_id
            ? a.user_id.localeCompare(b.user_id)
            : a.conversation_id.localeCompare(b.conversation_id),
        );
      };
      expect(await readBack(legacy.pool)).toEqual(before.rows);

      // The same events materialised afresh: the migrated rows are what the new code writes.
      await apply(events);
      expect(await readBack(db.pool)).toEqual(before.rows);
      const rows = (pool: pg.Pool) =>
        pool
          .query(
            `SELECT conversation_id, user_id, role, joined_seq, left_seq, last_read_seq, last_delivered_seq, own_after_read
               FROM members WHERE conversation_id = ANY($1) ORDER BY 1, 2`,
            [[...old.conversations.keys()]],
          )
          .then((r) => r.rows);
      expect(await rows(legacy.pool)).toEqual(await rows(db.pool));
    } finally {
      await legacy.cleanup();
    }
  }, 120_000);
});

/** Valid events with sends, reads, recalls, leaves and rejoins in `conversations` groups of u0..u7. */
function scenario(prefix: string, conversations: number, count: number): WorkloadEvent[] {
  const random = prng(7);
  const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)]!;
  const users = Array.from({ length: 8 }, (_, i) => `u${i}`);
  const convs = Array.from({ length: conversations }, (_, i) => ({
    id: `${prefix}-${i}`,
    active: new Set(users.slice(0, 4)),
    seq: 0,
    messages: [] as { id: string; sender: string; recalled: boolean }[],
  }));
  const out: WorkloadEvent[] = convs.map((c) =>
    ev(c.id, { type: "chat.conversation.created", kind: "group", createdBy: "u0", members: [...c.active] }),
  );
  while (out.length < count) {
    const c = pick(convs);
    const active = [...c.active];
    const r = random();
    if (r < 0.5) {
      const e = ev(c.id, { type: "chat.message.sent", senderId: pick(active), content: text("m") });
      c.seq++;
      c.messages.push({ id: e.id, sender: (e.input as { senderId: string }).senderId, recalled: false });
      out.push(e);
    } else if (r < 0.7 && c.seq > 0)
      out.push(
        ev(c.id, {
          type: "chat.receipt.read",
          userId: pick(active),
          upToSeq: 1 + Math.floor(random() * (c.seq + 2)),
        }),
      );
    else if (r < 0.75 && c.seq > 0)
      out.push(ev(c.id, { type: "chat.receipt.delivered", userId: pick(active), upToSeq: c.seq }));
    else if (r < 0.85 && active.length > 2) {
      const userId = pick(active.filter((u) => u !== "u0"));
      c.active.delete(userId);
      out.push(ev(c.id, { type: "chat.member.left", userId }));
    } else if (r < 0.95) {
      const outside = users.filter((u) => !c.active.has(u));
      if (outside.length === 0) continue;
      const userId = pick(outside);
      c.active.add(userId);
      out.push(ev(c.id, { type: "chat.member.joined", userId }));
    } else {
      const live = c.messages.filter((g) => !g.recalled);
      if (live.length === 0) continue;
      const g = pick(live);
      g.recalled = true;
      out.push(ev(c.id, { type: "chat.message.recalled", messageId: g.id, recalledBy: g.sender }));
    }
  }
  return out;
}

interface OldMember {
  role: string;
  joinedAt: Date;
  joinedOffset: number;
  joinedSeq: number;
  leftAt: Date | null;
  leftOffset: number | null;
  lastDeliveredSeq: number;
  lastReadSeq: number;
  unreadCount: number;
}
interface OldConversation {
  createdAt: Date;
  createdEventId: string;
  lastSeq: number;
  lastMessageAt: Date | null;
  lastActivityAt: Date;
  messages: { eventId: string; sender: string; sentAt: Date; offset: number }[];
  members: Map<string, OldMember>;
}

/**
 * The projection the materialiser wrote before migration 008, by its old rules (written
 * again here, independently of evolve.ts): each message bumps every other current
 * member's unread_count; a read receipt recounts it; a leave freezes it; a join resets it.
 */
function oldProjection(events: WorkloadEvent[]) {
  const conversations = new Map<string, OldConversation>();
  events.forEach((e, offset) => {
    const input = e.input;
    if (input.type === "chat.conversation.created") {
      const c: OldConversation = {
        createdAt: e.time,
        createdEventId: e.id,
        lastSeq: 0,
        lastMessageAt: null,
        lastActivityAt: e.time,
        messages: [],
        members: new Map(),
      };
      for (const u of input.members)
        c.members.set(u, {
          role: u === input.createdBy ? "owner" : "member",
          joinedAt: e.time,
          joinedOffset: offset,
          joinedSeq: 0,
          leftAt: null,
          leftOffset: null,
          lastDeliveredSeq: 0,
          lastReadSeq: 0,
          unreadCount: 0,
        });
      conversations.set(e.conversationId, c);
      return;
    }
    const c = conversations.get(e.conversationId)!;
    c.lastActivityAt = e.time;
    if (input.type === "chat.message.sent") {
      c.lastSeq++;
      c.lastMessageAt = e.time;
      c.messages.push({ eventId: e.id, sender: input.senderId, sentAt: e.time, offset });
      for (const [u, m] of c.members) if (m.leftAt === null && u !== input.senderId) m.unreadCount++;
    } else if (input.type === "chat.receipt.read" || input.type === "chat.receipt.delivered") {
      const m = c.members.get(input.userId)!;
      const upTo = Math.min(input.upToSeq, c.lastSeq);
      if (input.type === "chat.receipt.read" && upTo > m.lastReadSeq) {
        m.lastReadSeq = upTo;
        const from = Math.max(upTo, m.joinedSeq);
        m.unreadCount = c.messages.filter((g, i) => i + 1 > from && g.sender !== input.userId).length;
      }
      m.lastDeliveredSeq = Math.max(m.lastDeliveredSeq, upTo, m.lastReadSeq);
    } else if (input.type === "chat.member.left") {
      const m = c.members.get(input.userId)!;
      m.leftAt = e.time;
      m.leftOffset = offset;
    } else if (input.type === "chat.member.joined") {
      const previous = c.members.get(input.userId);
      c.members.set(input.userId, {
        role: "member",
        joinedAt: e.time,
        joinedOffset: offset,
        joinedSeq: c.lastSeq,
        leftAt: null,
        leftOffset: null,
        lastDeliveredSeq: previous?.lastDeliveredSeq ?? 0,
        lastReadSeq: previous?.lastReadSeq ?? 0,
        unreadCount: 0,
      });
    }
  });
  return { conversations };
}

/** A schema migrated up to 007 only: the projection as it was before this change. */
async function legacySchema(): Promise<{ pool: pg.Pool; cleanup(): Promise<void> }> {
  const schema = uniqueName("mat_unread_legacy").toLowerCase();
  const admin = new pg.Client({ connectionString: databaseUrl() });
  await admin.connect();
  await admin.query(`CREATE SCHEMA "${schema}"`);
  await admin.end();
  const url = new URL(databaseUrl());
  url.searchParams.set("options", `-c search_path=${schema}`);
  const pool = new pg.Pool({ connectionString: url.toString(), max: 2 });
  const dir = join(dirname(fileURLToPath(import.meta.url)), "..", "migrations");
  await pool.query(
    "CREATE TABLE chatbus_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
  );
  for (const file of readdirSync(dir)
    .filter((f) => /^00[1-7]_.*\.sql$/.test(f))
    .sort()) {
    await pool.query(readFileSync(join(dir, file), "utf8"));
    await pool.query("INSERT INTO chatbus_migrations (version) VALUES ($1)", [file]);
  }
  return {
    pool,
    async cleanup() {
      await pool.end();
      const client = new pg.Client({ connectionString: databaseUrl() });
      await client.connect();
      await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      await client.end();
    },
  };
}

async function insertOldProjection(pool: pg.Pool, old: ReturnType<typeof oldProjection>): Promise<void> {
  for (const [id, c] of old.conversations) {
    await pool.query(
      `INSERT INTO conversations (conversation_id, kind, title, created_by, created_at, created_event_id, partition,
                                  last_seq, last_message_at, last_activity_at)
       VALUES ($1, 'group', NULL, 'u0', $2, $3, 0, $4, $5, $6)`,
      [id, c.createdAt, c.createdEventId, c.lastSeq, c.lastMessageAt, c.lastActivityAt],
    );
    for (const [i, g] of c.messages.entries())
      await pool.query(
        `INSERT INTO messages (conversation_id, seq, event_id, sender_id, content, priority, sent_at, materialised_at,
                               partition, "offset")
         VALUES ($1, $2, $3, $4, '{"type":"text","text":"m"}', 'normal', $5, now(), 0, $6)`,
        [id, i + 1, g.eventId, g.sender, g.sentAt, g.offset],
      );
    for (const [u, m] of c.members)
      await pool.query(
        `INSERT INTO members (conversation_id, user_id, role, joined_at, joined_offset, joined_seq, left_at, left_offset,
                              last_delivered_seq, last_read_seq, unread_count)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
        [
          id,
          u,
          m.role,
          m.joinedAt,
          m.joinedOffset,
          m.joinedSeq,
          m.leftAt,
          m.leftOffset,
          m.lastDeliveredSeq,
          m.lastReadSeq,
          m.unreadCount,
        ],
      );
  }
}
