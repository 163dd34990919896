/**
 * Business rules, poison records and duplicates against the real broker and database:
 * each rule broken once is dead-lettered with its reason and the conversation goes
 * on; the same records produced twice (kcat) and the same clientMsgId sent twice are
 * one message each.
 */
import { execFileSync } from "node:child_process";
import {
  createProjectionReader,
  eventsChannel,
  type Materialiser,
  startMaterialiser,
} from "@chatbus/consumer-runtime/materialiser";
import { encodeEvent, uuidv7 } from "@chatbus/producer-sdk";
import pg from "pg";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import { replayDeadLetter } from "../src/dead-letters/store.ts";
import {
  produceWorkload,
  sequenceViolations,
  type WorkloadEvent,
  waitUntilApplied,
} from "./materialiser-support.ts";

let topic: string;
let db: TestSchema;
let materialiser: Materialiser;
const registry = new Registry();
const at = (n: number) => new Date(Date.UTC(2026, 1, 1, 0, 0, n));
let clock = 0;
const ev = (conversationId: string, input: WorkloadEvent["input"], id = uuidv7()): WorkloadEvent => ({
  conversationId,
  input,
  id,
  time: at(clock++),
});

beforeAll(async () => {
  topic = await createTestTopic("mat_rules", 3);
  db = await createTestSchema("mat_rules");
  materialiser = await startMaterialiser({
    pool: db.pool,
    topic,
    brokers: kafkaBrokers(),
    groupId: uniqueName("mat-rules"),
    registry,
    statusIntervalMs: 200,
  });
});

afterAll(async () => {
  await materialiser?.stop();
  await db?.cleanup();
});

describe("materialiser business rules", () => {
  it("dead-letters each broken rule with its reason and the conversation goes on", async () => {
    const sent = uuidv7();
    const events = [
      ev("r1", {
        type: "chat.conversation.created",
        kind: "group",
        createdBy: "ana",
        members: ["ana", "bob"],
      }),
      ev("r1", { type: "chat.message.sent", senderId: "ana", content: { type: "text", text: "one" } }, sent),
      // only members send
      ev("r1", { type: "chat.message.sent", senderId: "eve", content: { type: "text", text: "intruder" } }),
      // only the sender edits
      ev("r1", {
        type: "chat.message.edited",
        messageId: sent,
        editorId: "bob",
        content: { type: "text", text: "hijack" },
      }),
      // only the sender recalls
      ev("r1", { type: "chat.message.recalled", messageId: sent, recalledBy: "bob" }),
      // adding a member who is one already is a benign no-op (not a dead letter)
      ev("r1", { type: "chat.member.joined", userId: "bob", addedBy: "ana" }),
      // only owners grant roles (bob is a plain member)
      ev("r1", { type: "chat.member.joined", userId: "dan", addedBy: "bob", role: "admin" }),
      // the conversation must exist
      ev("ghost", { type: "chat.message.sent", senderId: "ana", content: { type: "text", text: "boo" } }),
      // and it goes on
      ev("r1", { type: "chat.message.sent", senderId: "bob", content: { type: "text", text: "two" } }),
      ev("r1", {
        type: "chat.message.edited",
        messageId: sent,
        editorId: "ana",
        content: { type: "text", text: "one (edited)" },
      }),
    ];
    await produceWorkload(topic, events);
    // A poison record: not a chat event at all.
    const kafka = (await import("kafkajs")).Kafka;
    const producer = new kafka({ clientId: "t", brokers: kafkaBrokers() }).producer();
    await producer.connect();
    await producer.send({ topic, messages: [{ key: "r1", value: "{not json", headers: { ce_type: "x" } }] });
    await producer.disconnect();
    await waitUntilApplied(db.pool, topic);

    const { rows } = await db.pool.query<{
      failure_class: string;
      error_code: string;
      error_message: string;
    }>(
      "SELECT failure_class, error_code, error_message FROM dead_letters WHERE subscription = 'materialiser' ORDER BY partition, \"offset\"",
    );
    const codes = rows.map((r) => `${r.failure_class}:${r.error_code}`).sort();
    expect(codes).toEqual(
      [
        "business:CHATBUS_ROLE_FORBIDDEN",
        "business:CHATBUS_CONVERSATION_NOT_FOUND",
        "business:CHATBUS_NOT_A_MEMBER",
        "business:CHATBUS_NOT_THE_SENDER",
        "business:CHATBUS_NOT_THE_SENDER",
        "poison:CHATBUS_UNDECODABLE",
      ].sort(),
    );
    const messages = rows.map((r) => r.error_message).join("\n");
    expect(messages).toContain('only members send: "eve" is not a member');
    expect(messages).toContain("only the sender edits");
    expect(messages).toContain("only the sender recalls");
    expect(messages).toContain('only an owner grants the role admin: "bob" is member');
    expect(messages).toContain('conversation "ghost", which does not exist');

    const reader = createProjectionReader(db.pool);
    const history = await reader.history("r1", { after: 0, limit: 10 });
    expect(history.map((m) => [m.seq, m.senderId, m.content])).toEqual([
      [1, "ana", { type: "text", text: "one (edited)" }],
      [2, "bob", { type: "text", text: "two" }],
    ]);
    expect(await reader.conversation("ghost")).toBeNull();
    // No foreign key guards messages (migration 010): the rule above is what keeps them out.
    const ghost = await db.pool.query("SELECT 1 FROM messages WHERE conversation_id = 'ghost'");
    expect(ghost.rowCount).toBe(0);
    // SSE: the user's events in (partition, offset) order, the message content joined back.
    const { events: logged, cursor } = await reader.eventsAfter({}, "bob", 100);
    expect(logged.map((e) => [e.type, e.seq])).toEqual([
      ["chat.conversation.created", null],
      ["chat.message.sent", 1],
      ["chat.message.sent", 2],
      ["chat.message.edited", 1],
    ]);
    expect(logged[1]!.payload).toMatchObject({
      senderId: "ana",
      content: { type: "text", text: "one (edited)" },
    });
    expect(await reader.eventsAfter(cursor, "bob", 100)).toEqual({ events: [], cursor });
    expect(await reader.eventsAfter({}, "eve", 100)).toEqual({ events: [], cursor: {} });
    const inbox = await reader.inbox("bob", { limit: 10 });
    expect(inbox.map((i) => [i.conversation.id, i.membership.unreadCount, i.lastMessage?.seq])).toEqual([
      ["r1", 1, 2],
    ]);
    const metrics = await registry.getSingleMetricAsString("chatbus_events_dead_lettered_total");
    expect(metrics).toContain('failure_class="business"} 5');
  });

  it("makes the same clientMsgId one message and the same records produced twice (kcat) change nothing", async () => {
    const base = [
      ev("d1", {
        type: "chat.conversation.created",
        kind: "direct",
        createdBy: "ana",
        members: ["ana", "bob"],
      }),
      ev("d1", {
        type: "chat.message.sent",
        senderId: "ana",
        content: { type: "text", text: "hello" },
        clientMsgId: "c-1",
      }),
      // a client retry: a new event with the same clientMsgId
      ev("d1", {
        type: "chat.message.sent",
        senderId: "ana",
        content: { type: "text", text: "hello" },
        clientMsgId: "c-1",
      }),
      // the same clientMsgId from another sender is another message
      ev("d1", {
        type: "chat.message.sent",
        senderId: "bob",
        content: { type: "text", text: "hi" },
        clientMsgId: "c-1",
      }),
      ev("d1", { type: "chat.message.sent", senderId: "bob", content: { type: "text", text: "plain" } }),
      ev("d1", { type: "chat.receipt.read", userId: "bob", upToSeq: 1 }),
    ];
    await produceWorkload(topic, base);
    await waitUntilApplied(db.pool, topic);
    const reader = createProjectionReader(db.pool);
    const before = await reader.history("d1", { after: 0, limit: 10 });
    expect(before.map((m) => [m.seq, m.senderId, m.clientMsgId])).toEqual([
      [1, "ana", "c-1"],
      [2, "bob", "c-1"],
      [3, "bob", null],
    ]);

    // Produce the very same records again with kcat (same ce_id, key, headers, value).
    const listener = new pg.Client({ connectionString: db.url });
    await listener.connect();
    const notes: string[] = [];
    listener.on("notification", (n) => notes.push(n.payload ?? ""));
    await listener.query(`LISTEN "${eventsChannel(db.schema)}"`);
    const lines = base.slice(1).map((e) => {
      const { record } = encodeEvent(e.conversationId, e.input, { source: "/test", id: e.id, time: e.time });
      return { record };
    });
    for (const { record } of lines) {
      const headerArgs = Object.entries(record.headers).flatMap(([k, v]) => ["-H", `${k}=${v}`]);
      execFileSync("kcat", ["-P", "-b", kafkaBrokers()[0]!, "-t", topic, "-k", record.key, ...headerArgs], {
        input: record.value,
      });
    }
    await waitUntilApplied(db.pool, topic);
    const after = await reader.history("d1", { after: 0, limit: 10 });
    expect(after.map((m) => [m.seq, m.eventId])).toEqual(before.map((m) => [m.seq, m.eventId]));
    const dups = await db.pool.query<{ reason: string; n: string }>(
      "SELECT reason, count(*) AS n FROM duplicate_messages WHERE conversation_id = 'd1' GROUP BY reason ORDER BY reason",
    );
    // 1 clientMsgId retry in the first pass; 4 re-produced sends (the retry among them, seen by event id) in the second.
    expect(dups.rows.map((r) => [r.reason, Number(r.n)])).toEqual([
      ["client_msg_id", 2],
      ["event_id", 3],
    ]);
    const members = await reader.members("d1");
    expect(members.find((m) => m.userId === "bob")).toMatchObject({ lastReadSeq: 1, unreadCount: 0 });
    expect(members.find((m) => m.userId === "ana")).toMatchObject({ unreadCount: 2 });
    const deadline = Date.now() + 5000;
    while (notes.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(JSON.parse(notes[0]!)).toMatchObject({ partition: expect.any(Number), from: expect.any(String) });
    await listener.end();
    expect(await sequenceViolations(db.pool)).toEqual([]);
  });

  it("replays a dead letter by producing it to the log again, where it now applies", async () => {
    const { rows } = await db.pool.query<{ id: string }>(
      "SELECT id::text AS id FROM dead_letters WHERE error_code = 'CHATBUS_CONVERSATION_NOT_FOUND' AND conversation_id = 'ghost'",
    );
    expect(rows).toHaveLength(1);
    // The operator fixes the cause (the conversation now exists), then replays.
    await produceWorkload(topic, [
      ev("ghost", {
        type: "chat.conversation.created",
        kind: "group",
        createdBy: "ana",
        members: ["ana", "bob"],
      }),
    ]);
    await waitUntilApplied(db.pool, topic);
    await replayDeadLetter(db.pool, rows[0]!.id, { by: "test" });
    const reader = createProjectionReader(db.pool);
    const deadline = Date.now() + 30_000;
    while ((await reader.history("ghost", { limit: 10 })).length === 0) {
      if (Date.now() > deadline) throw new Error("the replayed dead letter was not applied");
      await new Promise((r) => setTimeout(r, 100));
    }
    const history = await reader.history("ghost", { limit: 10 });
    expect(history.map((m) => [m.seq, m.senderId, m.content])).toEqual([
      [1, "ana", { type: "text", text: "boo" }],
    ]);
    const status = await db.pool.query("SELECT status, replay_count FROM dead_letters WHERE id = $1", [
      rows[0]!.id,
    ]);
    expect(status.rows[0]).toEqual({ status: "replayed", replay_count: 1 });
  });
});
