/**
 * When the materialiser may accept a batch that starts above its stored offset, against
 * the real broker and database. Only where Kafka itself holds nothing in between:
 * - a batch fetched above the stored offset is refused and the partition sought back,
 *   every time, even when it arrives right after that seek (a fetch made before the seek
 *   can be handed over after it: accepting it would skip the records in between);
 * - records deleted by retention before they were applied are passed over, loudly;
 * - aborted transactions and transaction markers in the log are no gap at all.
 */
import { startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import { type ChatEventInput, encodeEvent, uuidv7 } from "@chatbus/producer-sdk";
import { type EachBatchPayload, Kafka, logLevel } from "kafkajs";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import { applyBatch, type BatchRecord } from "../src/materialiser/apply-batch.ts";
import { MaterialiserStatus } from "../src/materialiser/materialiser-status.ts";
import { partitionBatchHandler } from "../src/materialiser/partition-batch.ts";
import { produceWorkload, sequenceViolations, waitUntilApplied } from "./materialiser-support.ts";

// One schema per test: event_log is keyed by (partition, offset) of one topic.
let db: TestSchema;
beforeEach(async () => {
  db = await createTestSchema("mat_gaps");
});
afterEach(async () => {
  await db?.cleanup();
});

const count = async (sql: string, values: unknown[] = []) =>
  Number((await db.pool.query<{ n: string }>(sql, values)).rows[0]!.n);
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
/** A conversation's creation and `n` messages m1..mn. */
const workload = (conversationId: string, n: number) =>
  [created, ...Array.from({ length: n }, (_, i) => text(`m${i + 1}`))].map((input, i) => ({
    conversationId,
    input,
    id: uuidv7(),
    time: new Date(Date.UTC(2026, 3, 1, 0, 0, 0, i)),
  }));
const texts = async (conversationId: string) =>
  (
    await db.pool.query<{ t: string }>(
      "SELECT content->>'text' AS t FROM messages WHERE conversation_id = $1 ORDER BY seq",
      [conversationId],
    )
  ).rows.map((r) => r.t);

describe("gaps the materialiser refuses", () => {
  it("seeks back from every batch fetched above the stored offset, also one handed over after the seek", async () => {
    const topic = uniqueName("gap_refused");
    const records: BatchRecord[] = workload("refused", 40).map((e, offset) => ({
      ...encodeEvent(e.conversationId, e.input, { source: "/test/gaps", id: e.id, time: e.time }).record,
      offset: String(offset),
      timestamp: String(Date.now()),
    }));
    const client = await db.pool.connect();
    try {
      await applyBatch(
        client,
        { topic, partition: 0, schema: db.schema, subscription: "materialiser" },
        records.slice(0, 11),
      );
    } finally {
      client.release();
    }
    const seeks: string[] = [];
    const handle = partitionBatchHandler({
      pool: db.pool,
      topic,
      schema: db.schema,
      subscription: "materialiser",
      status: new MaterialiserStatus({
        pool: db.pool,
        group: "gaps",
        topic,
        subscription: "materialiser",
        instanceId: "test",
        metrics: undefined,
        log: undefined,
      }),
      metrics: undefined,
      noops: undefined,
      recordWait: undefined,
      log: undefined,
      measureLatency: false,
      retryInitialMs: 10,
      retryMaxMs: 100,
      stuckAfterMs: 60_000,
      concurrency: 1,
      transactions: 1,
      maxQueuedRecords: 1000,
      maxRecordsPerApply: 1000,
      running: () => true,
      seek: (_partition, offset) => seeks.push(offset),
      logStartOffset: async () => "0",
    });
    // What kafkajs hands over: a batch fetched at `fetchedOffset` holding `messages`;
    // resolves once the lane has dealt with it.
    const deliver = async (fetchedOffset: number, from: number, to: number) => {
      const messages = records.slice(from, to);
      await handle.eachBatch({
        batch: {
          topic,
          partition: 0,
          fetchedOffset: String(fetchedOffset),
          highWatermark: String(records.length),
          messages,
          lastOffset: () => messages[messages.length - 1]!.offset,
          firstOffset: () => messages[0]!.offset,
        },
        resolveOffset: () => {},
        heartbeat: async () => {},
        commitOffsetsIfNecessary: async () => {},
        isRunning: () => true,
        isStale: () => false,
      } as unknown as EachBatchPayload);
      await handle.idle();
    };
    await deliver(25, 25, 41);
    expect(seeks).toEqual(["11"]);
    // A fetch made before the seek, handed over after it: still a gap.
    await deliver(30, 30, 41);
    expect(seeks).toEqual(["11", "11"]);
    expect(await texts("refused")).toEqual(Array.from({ length: 10 }, (_, i) => `m${i + 1}`));
    // The fetch at the stored offset is applied.
    await deliver(11, 11, 41);
    expect(await texts("refused")).toEqual(Array.from({ length: 40 }, (_, i) => `m${i + 1}`));
    expect(await count("SELECT next_offset AS n FROM projection_offsets WHERE topic = $1", [topic])).toBe(41);
  });
});

describe("holes Kafka itself has", () => {
  const admin = () =>
    new Kafka({ clientId: "test", brokers: kafkaBrokers(), logLevel: logLevel.NOTHING }).admin();

  it("passes over records deleted by retention before they were applied, and applies the rest", async () => {
    const topic = await createTestTopic("gap_retention", 1);
    const events = workload("retention", 30);
    await produceWorkload(topic, events);
    // Offsets 0..10 applied, then the log start moves to 20: 11..19 are gone.
    const records: BatchRecord[] = events.slice(0, 11).map((e, offset) => ({
      ...encodeEvent(e.conversationId, e.input, { source: "/test/materialiser", id: e.id, time: e.time })
        .record,
      offset: String(offset),
    }));
    const client = await db.pool.connect();
    try {
      await applyBatch(
        client,
        { topic, partition: 0, schema: db.schema, subscription: "materialiser" },
        records,
      );
    } finally {
      client.release();
    }
    const a = admin();
    await a.connect();
    await a.fetchTopicMetadata({ topics: [topic] }); // deleteTopicRecords needs it loaded
    await a.deleteTopicRecords({ topic, partitions: [{ partition: 0, offset: "20" }] });
    await a.disconnect();
    const materialiser = await startMaterialiser({
      pool: db.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("gap-retention"),
    });
    try {
      await waitUntilApplied(db.pool, topic, 60_000);
    } finally {
      await materialiser.stop();
    }
    const kept = [
      ...Array.from({ length: 10 }, (_, i) => i + 1),
      ...Array.from({ length: 11 }, (_, i) => i + 20),
    ];
    expect(await texts("retention")).toEqual(kept.map((n) => `m${n}`));
    expect(await count("SELECT count(*) AS n FROM dead_letters WHERE topic = $1", [topic])).toBe(0);
    expect(await sequenceViolations(db.pool)).toEqual([]);
  });

  it("applies committed transactions around an aborted one and their markers without a gap", async () => {
    const topic = await createTestTopic("gap_tx", 1);
    const kafka = new Kafka({ clientId: "test-tx", brokers: kafkaBrokers(), logLevel: logLevel.NOTHING });
    const producer = kafka.producer({
      transactionalId: uniqueName("gap-tx"),
      idempotent: true,
      maxInFlightRequests: 1,
    });
    await producer.connect();
    const events = workload("tx", 12);
    const send = async (from: number, to: number, outcome: "commit" | "abort") => {
      const tx = await producer.transaction();
      await tx.send({
        topic,
        acks: -1,
        messages: events.slice(from, to).map((e) => {
          const { record } = encodeEvent(e.conversationId, e.input, {
            source: "/test/tx",
            id: e.id,
            time: e.time,
          });
          return { key: record.key, value: record.value, headers: record.headers };
        }),
      });
      await (outcome === "commit" ? tx.commit() : tx.abort());
    };
    const materialiser = await startMaterialiser({
      pool: db.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("gap-tx"),
    });
    try {
      await send(0, 5, "commit"); // created, m1..m4
      await send(5, 9, "abort"); // m5..m8 never happened
      await send(9, 13, "commit"); // m9..m12
      await producer.disconnect();
      // A plain record last, so that the log ends with data rather than a marker.
      await produceWorkload(topic, workload("tx-end", 0));
      await waitUntilApplied(db.pool, topic, 60_000);
    } finally {
      await materialiser.stop();
    }
    expect(await texts("tx")).toEqual(["m1", "m2", "m3", "m4", "m9", "m10", "m11", "m12"]);
    expect(await count("SELECT count(*) AS n FROM dead_letters WHERE topic = $1", [topic])).toBe(0);
    expect(await sequenceViolations(db.pool)).toEqual([]);
  });
});
