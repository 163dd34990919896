/**
 * One slow partition no longer holds the others (issue 12), against the real broker and
 * database. kafkajs fetches again only after every batch of a fetch finished; the
 * materialiser's partition lanes apply each partition on its own, so records of another
 * partition produced while one partition's transaction hangs are applied meanwhile.
 * Then it counts: every event applied once, per conversation order kept. A transaction
 * that hangs gives its turn up (`transactionsAtOnce`), so three hanging partitions do not
 * hold a fourth. And a lane that
 * gives up on a batch of a consumer run that ended (PostgreSQL failing, then a restart)
 * keeps the batches the new run fetched: kafkajs has moved past them.
 */

import { startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import { type ChatEventInput, encodeEvent, uuidv7 } from "@chatbus/producer-sdk";
import type { EachBatchPayload, KafkaMessage } from "kafkajs";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import { MaterialiserStatus } from "../src/materialiser/materialiser-status.ts";
import { partitionBatchHandler } from "../src/materialiser/partition-batch.ts";
import { produceWorkload, topicEnds, type WorkloadEvent, waitUntilApplied } from "./materialiser-support.ts";

let db: TestSchema;
beforeAll(async () => {
  db = await createTestSchema("mat_pipe");
});
afterAll(async () => {
  await db?.cleanup();
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
let clock = 0;
const ev = (conversationId: string, input: WorkloadEvent["input"]): WorkloadEvent => ({
  conversationId,
  input,
  id: uuidv7(),
  time: new Date(Date.UTC(2026, 4, 1) + clock++),
});
const created = (id: string) =>
  ev(id, { type: "chat.conversation.created", kind: "direct", createdBy: "ana", members: ["ana", "bob"] });
const text = (id: string, t: string) =>
  ev(id, { type: "chat.message.sent", senderId: "ana", content: { type: "text", text: t } });

/**
 * A message "SLOW" holds its partition's transaction for 8 s. The sequence counts the
 * transactions that started sleeping (nextval is not transactional, so others see it at
 * once; pg_stat_activity would also count other test files' sleeps).
 */
async function addSlowTrigger(schema: TestSchema): Promise<void> {
  await schema.pool.query(`
    CREATE SEQUENCE test_pipe_slow_started;
    CREATE FUNCTION test_pipe_slow() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.content->>'text' = 'SLOW' THEN
        PERFORM nextval('test_pipe_slow_started');
        PERFORM pg_sleep(8);
      END IF;
      RETURN NEW;
    END $$`);
  await schema.pool.query(
    "CREATE TRIGGER test_pipe_slow BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION test_pipe_slow()",
  );
}

/** How many SLOW transactions started sleeping (see `addSlowTrigger`). */
async function slowStarted(schema: TestSchema): Promise<number> {
  const { rows } = await schema.pool.query<{ n: string }>(
    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM test_pipe_slow_started",
  );
  return Number(rows[0]!.n);
}

describe("partition lanes", () => {
  it("apply another partition while one partition's transaction hangs, and count every event once in order", async () => {
    const topic = await createTestTopic("mat_pipe", 2);
    const registry = new Registry();
    const inFlight = async () =>
      (await registry.getSingleMetric("chatbus_events_in_flight")!.get()).values[0]?.value ?? 0;
    await addSlowTrigger(db);
    const materialiser = await startMaterialiser({
      pool: db.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("mat-pipe"),
      registry,
    });
    try {
      const ids = Array.from({ length: 10 }, (_, i) => `pipe-${i}`);
      await produceWorkload(topic, ids.map(created));
      await waitUntilApplied(db.pool, topic, 60_000);
      const { rows: placed } = await db.pool.query<{ conversation_id: string; partition: number }>(
        "SELECT conversation_id, partition FROM event_log",
      );
      const slow = placed.find((r) => r.partition === 0)!.conversation_id;
      const fast = placed.find((r) => r.partition === 1)!.conversation_id;

      await produceWorkload(topic, [text(slow, "SLOW"), text(slow, "after")]);
      // Wait until the slow partition's transaction is inside the trigger's sleep.
      await expect.poll(() => slowStarted(db), { timeout: 5000, interval: 50 }).toBe(1);
      // Produced after the slow batch was fetched: they come in a later fetch.
      await produceWorkload(
        topic,
        Array.from({ length: 20 }, (_, i) => text(fast, `fast-${i + 1}`)),
      );
      const deadline = Date.now() + 30_000;
      for (;;) {
        const { rows } = await db.pool.query<{ n: number; slow: number }>(
          `SELECT count(*) FILTER (WHERE conversation_id = $1)::int AS n,
                  count(*) FILTER (WHERE content->>'text' = 'SLOW')::int AS slow
             FROM messages`,
          [fast],
        );
        if (rows[0]!.n === 20) {
          // The other partition was applied while the slow transaction still ran (before
          // the lanes, it waited for the slow batch: the SLOW row was there first).
          expect(rows[0]!.slow).toBe(0);
          break;
        }
        if (Date.now() > deadline) throw new Error(`the fast partition was not applied: ${rows[0]!.n} of 20`);
        await sleep(10);
      }
      // Records fetched behind the slow transaction wait on its lane, and are in flight:
      // the 2 being applied and these 5 queued.
      await produceWorkload(
        topic,
        Array.from({ length: 5 }, (_, i) => text(slow, `queued-${i + 1}`)),
      );
      await expect.poll(inFlight, { timeout: 5000, interval: 20 }).toBe(7);

      await waitUntilApplied(db.pool, topic, 60_000);
      const ends = await topicEnds(topic);
      const total = [...ends.values()].reduce((sum, n) => sum + Number(n), 0);
      const { rows: log } = await db.pool.query<{ n: number; distinct_ids: number }>(
        "SELECT count(*)::int AS n, count(DISTINCT event_id)::int AS distinct_ids FROM event_log",
      );
      expect(log[0]).toEqual({ n: total, distinct_ids: total });
      const { rows: messages } = await db.pool.query<{ c: string; seq: string; t: string }>(
        "SELECT conversation_id AS c, seq, content->>'text' AS t FROM messages ORDER BY conversation_id, seq",
      );
      expect(messages.filter((m) => m.c === slow).map((m) => m.t)).toEqual([
        "SLOW",
        "after",
        ...Array.from({ length: 5 }, (_, i) => `queued-${i + 1}`),
      ]);
      expect(await inFlight()).toBe(0);
      expect(messages.filter((m) => m.c === fast).map((m) => [m.seq, m.t])).toEqual(
        Array.from({ length: 20 }, (_, i) => [String(i + 1), `fast-${i + 1}`]),
      );
      const { rowCount: dead } = await db.pool.query("SELECT 1 FROM dead_letters");
      expect(dead).toBe(0);
    } finally {
      await materialiser.stop();
    }
  });

  it("lets a fourth partition through while three partitions' transactions hang (more than the turns)", async () => {
    const topic = await createTestTopic("mat_pipe_turns", 4);
    // A schema of its own: a projection follows one topic (event_log's key has no topic).
    const own = await createTestSchema("mat_pipe_turns");
    await addSlowTrigger(own);
    const materialiser = await startMaterialiser({
      pool: own.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("mat-pipe-turns"),
      registry: new Registry(),
      transactionsAtOnce: 2,
    });
    try {
      const ids = Array.from({ length: 40 }, (_, i) => `turns-${i}`);
      await produceWorkload(topic, ids.map(created));
      await waitUntilApplied(own.pool, topic, 60_000);
      const { rows: placed } = await own.pool.query<{ conversation_id: string; partition: number }>(
        "SELECT conversation_id, partition FROM event_log WHERE conversation_id LIKE 'turns-%'",
      );
      const on = (p: number) => placed.find((r) => r.partition === p)!.conversation_id;
      const started = Date.now();
      // One at a time, so that each is a transaction of its own (not gathered into one).
      for (const p of [0, 1, 2]) {
        await produceWorkload(topic, [text(on(p), "SLOW")]);
        await expect.poll(() => slowStarted(own), { timeout: 6000, interval: 20 }).toBe(p + 1);
      }
      // The third started while the first two still slept: they gave their turns up.
      expect(Date.now() - started).toBeLessThan(8000);
      await produceWorkload(
        topic,
        Array.from({ length: 20 }, (_, i) => text(on(3), `fast-${i + 1}`)),
      );
      await expect
        .poll(
          async () =>
            (
              await own.pool.query<{ n: number; slow: number }>(
                `SELECT count(*) FILTER (WHERE conversation_id = $1)::int AS n,
                        count(*) FILTER (WHERE content->>'text' = 'SLOW' AND conversation_id LIKE 'turns-%')::int AS slow
                   FROM messages`,
                [on(3)],
              )
            ).rows[0],
          { timeout: 6000, interval: 20 },
        )
        .toEqual({ n: 20, slow: 0 });
      await waitUntilApplied(own.pool, topic, 60_000);
      const { rows } = await own.pool.query<{ t: string }>(
        "SELECT content->>'text' AS t FROM messages WHERE conversation_id = $1 ORDER BY seq",
        [on(3)],
      );
      expect(rows.map((r) => r.t)).toEqual(Array.from({ length: 20 }, (_, i) => `fast-${i + 1}`));
      const { rows: slow } = await own.pool.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM messages WHERE content->>'text' = 'SLOW' AND conversation_id LIKE 'turns-%'",
      );
      expect(slow[0]!.n).toBe(3);
    } finally {
      await materialiser.stop();
      await own.cleanup();
    }
  });
});

/** A record as kafkajs hands it over. */
const kafkaRecord = (offset: number, conversationId: string, input: ChatEventInput): KafkaMessage => {
  const at = new Date(Date.UTC(2026, 5, 1, 0, 0, 0, offset));
  const { record: r } = encodeEvent(conversationId, input, { source: "/test", id: uuidv7(), time: at });
  return {
    ...r,
    offset: String(offset),
    timestamp: String(at.getTime()),
    attributes: 0,
    size: 0,
  } as unknown as KafkaMessage;
};

/** The part of kafkajs's eachBatch payload the lanes use, for one partition-0 batch. */
const payloadOf = (topic: string, messages: KafkaMessage[], isRunning: () => boolean) =>
  ({
    batch: {
      topic,
      partition: 0,
      fetchedOffset: messages[0]!.offset,
      messages,
      highWatermark: String(Number(messages[messages.length - 1]!.offset) + 1),
      lastOffset: () => messages[messages.length - 1]!.offset,
    },
    resolveOffset: () => {},
    heartbeat: async () => {},
    isRunning,
    isStale: () => false,
  }) as unknown as EachBatchPayload;

describe("a lane that gives up on a batch of a consumer run that ended", () => {
  it("keeps the batches the restarted consumer fetched and applies them, each event once", async () => {
    const own = await createTestSchema("mat_pipe_gen");
    const topic = uniqueName("mat_pipe_gen");
    const status = new MaterialiserStatus({
      pool: own.pool,
      group: "g",
      topic,
      subscription: "materialiser",
      instanceId: "test",
      metrics: undefined,
      log: undefined,
    });
    const lanes = partitionBatchHandler({
      pool: own.pool,
      topic,
      schema: own.schema,
      subscription: "materialiser",
      status,
      metrics: undefined,
      noops: undefined,
      recordWait: undefined,
      log: undefined,
      measureLatency: false,
      retryInitialMs: 20,
      retryMaxMs: 50,
      stuckAfterMs: 60_000,
      concurrency: 2,
      transactions: 2,
      maxQueuedRecords: 1000,
      maxRecordsPerApply: 1000,
      running: () => true,
      seek: () => {},
      logStartOffset: async () => "0",
    });
    const chat = "gen-1";
    const records = [
      kafkaRecord(0, chat, {
        type: "chat.conversation.created",
        kind: "direct",
        createdBy: "ana",
        members: ["ana", "bob"],
      }),
      ...[1, 2, 3].map((o) =>
        kafkaRecord(o, chat, {
          type: "chat.message.sent",
          senderId: "ana",
          content: { type: "text", text: `m${o}` },
        }),
      ),
    ];
    // While test_outage.on is true every write fails with a system failure (SQLSTATE P0001).
    await own.pool.query(`
      CREATE TABLE test_outage (on_ boolean NOT NULL);
      INSERT INTO test_outage VALUES (true);
      CREATE FUNCTION test_outage() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF (SELECT on_ FROM test_outage) THEN RAISE EXCEPTION 'injected outage'; END IF;
        RETURN NEW;
      END $$;
      CREATE TRIGGER test_outage BEFORE INSERT ON event_log FOR EACH ROW EXECUTE FUNCTION test_outage();`);
    // The first run's batch (offsets 0–1) fails and is retried.
    let firstRunning = true;
    await lanes.eachBatch(payloadOf(topic, records.slice(0, 2), () => firstRunning));
    await sleep(300);
    // The consumer restarts: it fetches from the committed offset (0) again, and the
    // first run is over, so the lane gives up on the first batch.
    lanes.dropQueued();
    await lanes.eachBatch(payloadOf(topic, records, () => true));
    firstRunning = false;
    await sleep(300);
    await own.pool.query("UPDATE test_outage SET on_ = false");
    try {
      const deadline = Date.now() + 20_000;
      for (;;) {
        const { rows } = await own.pool.query<{ next_offset: string }>(
          "SELECT next_offset FROM projection_offsets WHERE topic = $1",
          [topic],
        );
        if (rows[0]?.next_offset === "4") break;
        if (Date.now() > deadline)
          throw new Error(`the restarted run's batch was not applied: next offset ${rows[0]?.next_offset}`);
        await sleep(100);
      }
      await lanes.idle();
      const { rows } = await own.pool.query<{ n: number; distinct_ids: number }>(
        "SELECT count(*)::int AS n, count(DISTINCT event_id)::int AS distinct_ids FROM event_log",
      );
      expect(rows[0]).toEqual({ n: 4, distinct_ids: 4 });
      const texts = await own.pool.query("SELECT seq, content->>'text' AS t FROM messages ORDER BY seq");
      expect(texts.rows).toEqual([
        { seq: "1", t: "m1" },
        { seq: "2", t: "m2" },
        { seq: "3", t: "m3" },
      ]);
    } finally {
      await own.cleanup();
    }
  });
});
