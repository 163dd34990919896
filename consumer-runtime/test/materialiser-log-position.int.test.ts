/**
 * Where in the log the materialiser may apply (issue 20 items 3 and 5), against the real
 * broker and database:
 * - never across a gap: a batch that starts above the stored offset is refused and the
 *   consumer seeks back to the stored offset;
 * - one conversation, one partition: events of a conversation stored with another
 *   partition (produced there with kcat) are dead-lettered with a clear reason.
 */
import { execFileSync } from "node:child_process";
import { startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import { type ChatEventInput, encodeEvent, uuidv7 } from "@chatbus/producer-sdk";
import { Kafka, logLevel } from "kafkajs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import { applyBatch, type BatchRecord, OffsetGapError } from "../src/materialiser/apply-batch.ts";
import {
  produceWorkload,
  sequenceViolations,
  type WorkloadEvent,
  waitUntilApplied,
} from "./materialiser-support.ts";

let db: TestSchema;
beforeAll(async () => {
  db = await createTestSchema("mat_pos");
});
afterAll(async () => {
  await db?.cleanup();
});

const at = (n: number) => new Date(Date.UTC(2026, 3, 1, 0, 0, 0, n));
const count = async (sql: string, values: unknown[] = []) =>
  Number((await db.pool.query<{ n: string }>(sql, values)).rows[0]!.n);

describe("never apply across a gap", () => {
  it("refuses 50–80 after 0–20, and the running materialiser resumes from 21", async () => {
    const topic = await createTestTopic("mat_gap", 1);
    const events: WorkloadEvent[] = [
      {
        conversationId: "gap",
        input: {
          type: "chat.conversation.created",
          kind: "direct",
          createdBy: "ana",
          members: ["ana", "bob"],
        },
        id: uuidv7(),
        time: at(0),
      },
    ];
    for (let i = 1; i <= 80; i++)
      events.push({
        conversationId: "gap",
        input: {
          type: "chat.message.sent",
          senderId: i % 2 ? "ana" : "bob",
          content: { type: "text", text: `m${i}` },
        },
        id: uuidv7(),
        time: at(i),
      });
    // The very records the topic will hold (same ids, times and source: same bytes).
    const records: BatchRecord[] = events.map((e, offset) => ({
      ...encodeEvent(e.conversationId, e.input, { source: "/test/materialiser", id: e.id, time: e.time })
        .record,
      offset: String(offset),
    }));
    const context = {
      topic,
      partition: 0,
      schema: db.schema,
      subscription: "materialiser",
      acceptGap: () => false,
    };
    const client = await db.pool.connect();
    try {
      await applyBatch(client, context, records.slice(0, 21));
      const refused = await applyBatch(client, context, records.slice(50, 81)).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(OffsetGapError);
      expect((refused as OffsetGapError).stored).toBe("21");
    } finally {
      client.release();
    }
    expect(await count("SELECT next_offset AS n FROM projection_offsets WHERE topic = $1", [topic])).toBe(21);
    expect(await count("SELECT count(*) AS n FROM messages WHERE conversation_id = 'gap'")).toBe(20);

    // Kafka's committed offset says 50 (a restore lost the projection's later commits):
    // the materialiser must seek back to 21 instead of applying from 50.
    await produceWorkload(topic, events);
    const groupId = uniqueName("mat-gap");
    const admin = new Kafka({
      clientId: "test",
      brokers: kafkaBrokers(),
      logLevel: logLevel.NOTHING,
    }).admin();
    await admin.connect();
    await admin.setOffsets({ groupId, topic, partitions: [{ partition: 0, offset: "50" }] });
    await admin.disconnect();
    const materialiser = await startMaterialiser({ pool: db.pool, topic, brokers: kafkaBrokers(), groupId });
    try {
      await waitUntilApplied(db.pool, topic, 60_000);
    } finally {
      await materialiser.stop();
    }
    const { rows } = await db.pool.query<{ seq: string; t: string }>(
      "SELECT seq, content->>'text' AS t FROM messages WHERE conversation_id = 'gap' ORDER BY seq",
    );
    expect(rows).toEqual(events.slice(1).map((_, i) => ({ seq: String(i + 1), t: `m${i + 1}` })));
    expect(
      await count("SELECT count(DISTINCT event_id) AS n FROM event_log WHERE conversation_id = 'gap'"),
    ).toBe(81);
    expect(await count("SELECT count(*) AS n FROM dead_letters WHERE topic = $1", [topic])).toBe(0);
    expect(await sequenceViolations(db.pool)).toEqual([]);
  });
});

describe("one conversation, one partition", () => {
  it("dead-letters a conversation's events produced to another partition with kcat", async () => {
    const topic = await createTestTopic("mat_split", 2);
    // Its own schema: event_log is keyed by (partition, offset) of one topic.
    const own = await createTestSchema("mat_split");
    const kcat = (partition: number, conversationId: string, input: ChatEventInput) => {
      const { record } = encodeEvent(conversationId, input, { source: "/test/kcat", id: uuidv7() });
      const headers = Object.entries(record.headers).flatMap(([k, v]) => ["-H", `${k}=${v}`]);
      execFileSync(
        "kcat",
        [
          "-P",
          "-b",
          kafkaBrokers()[0]!,
          "-t",
          topic,
          "-p",
          String(partition),
          "-k",
          conversationId,
          ...headers,
        ],
        { input: record.value },
      );
    };
    const created: ChatEventInput = {
      type: "chat.conversation.created",
      kind: "group",
      createdBy: "ana",
      members: ["ana", "bob"],
    };
    const text = (t: string): ChatEventInput => ({
      type: "chat.message.sent",
      senderId: "ana",
      content: { type: "text", text: t },
    });
    const materialiser = await startMaterialiser({
      pool: own.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("mat-split"),
    });
    try {
      kcat(0, "split", created);
      kcat(0, "split", text("first, in its partition"));
      await waitUntilApplied(own.pool, topic, 60_000);
      // A producer with another partition count puts the same conversation elsewhere.
      kcat(1, "split", text("second, in another partition"));
      kcat(1, "split", created);
      kcat(1, "elsewhere", created);
      kcat(1, "elsewhere", text("a conversation of partition 1 goes on"));
      kcat(0, "split", text("third, in its partition again"));
      await waitUntilApplied(own.pool, topic, 60_000);
    } finally {
      await materialiser.stop();
    }
    const dl = await own.pool.query(
      `SELECT partition, event_type, failure_class, error_code, error_message FROM dead_letters
        WHERE topic = $1 ORDER BY partition, "offset"`,
      [topic],
    );
    expect(dl.rows.map((r) => [r.partition, r.event_type, r.failure_class, r.error_code])).toEqual([
      [1, "chat.message.sent", "business", "CHATBUS_WRONG_PARTITION"],
      [1, "chat.conversation.created", "business", "CHATBUS_WRONG_PARTITION"],
    ]);
    expect(dl.rows[0].error_message).toContain("lives in partition 0");
    const texts = await own.pool.query(
      "SELECT conversation_id, seq, content->>'text' AS t, partition FROM messages WHERE conversation_id IN ('split', 'elsewhere') ORDER BY 1, 2",
    );
    expect(texts.rows).toEqual([
      { conversation_id: "elsewhere", seq: "1", t: "a conversation of partition 1 goes on", partition: 1 },
      { conversation_id: "split", seq: "1", t: "first, in its partition", partition: 0 },
      { conversation_id: "split", seq: "2", t: "third, in its partition again", partition: 0 },
    ]);
    await own.cleanup();
  });
});
