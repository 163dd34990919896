/**
 * Several partitions in one transaction (issue 12: a transaction per partition cost more
 * than its one or two records at low rates). Each partition keeps its own offset guard:
 * a partition another writer moved meanwhile is not written while the others are; a
 * record the database refuses fails the whole shared transaction with nothing written,
 * and the running materialiser then applies each partition on its own, where the record
 * is isolated. Against the real database and broker.
 */
import { startMaterialiser } from "@chatbus/consumer-runtime/materialiser";
import { type ChatEventInput, encodeEvent, uuidv7 } from "@chatbus/producer-sdk";
import type pg from "pg";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "../../test/support/env.ts";
import {
  createTestSchema,
  createTestTopic,
  type TestSchema,
  uniqueName,
} from "../../test/support/isolation.ts";
import {
  type ApplyContext,
  applyBatch,
  applyPartitions,
  type BatchRecord,
  type PartitionRecords,
} from "../src/materialiser/apply-batch.ts";
import { eventsChannel } from "../src/materialiser/events-channel.ts";
import {
  addRefuseRule,
  groupCreated,
  metricSum,
  produceWorkload,
  sequenceViolations,
  textMessage,
  type WorkloadEvent,
  waitUntilApplied,
} from "./materialiser-support.ts";

let db: TestSchema;
beforeAll(async () => {
  db = await createTestSchema("mat_shared");
  await addRefuseRule(db.pool);
});
afterAll(async () => {
  await db?.cleanup();
});

const record = (offset: number, conversationId: string, input: ChatEventInput): BatchRecord => ({
  ...encodeEvent(conversationId, input, { source: "/test", id: uuidv7() }).record,
  offset: String(offset),
});
const context = (topic: string, partition: number): ApplyContext => ({
  topic,
  partition,
  schema: db.schema,
  subscription: "materialiser",
});
// event_log's key is (partition, offset): each test of the shared schema has its own offsets.
let base = 0;
/** A conversation created at offset `base` of its partition, then `texts` messages. */
const conversation = (topic: string, partition: number, id: string, texts: string[]): PartitionRecords => ({
  context: context(topic, partition),
  records: [
    record(base, id, groupCreated(["ana", "bob"])),
    ...texts.map((t, i) => record(base + i + 1, id, textMessage("ana", t))),
  ],
});
const offsets = async (topic: string) =>
  (
    await db.pool.query<{ partition: number; next_offset: string }>(
      "SELECT partition, next_offset FROM projection_offsets WHERE topic = $1 ORDER BY partition",
      [topic],
    )
  ).rows;

describe("applyPartitions", () => {
  it("applies three partitions in one transaction, each with its own offset, rows and notification", async () => {
    const topic = uniqueName("t");
    const listener = await db.pool.connect();
    const notes: unknown[] = [];
    listener.on("notification", (n) => notes.push(JSON.parse(n.payload!)));
    await listener.query(`LISTEN "${eventsChannel(db.schema)}"`);
    const parts = [
      conversation(topic, 0, `${topic}-a`, ["a1", "a2"]),
      conversation(topic, 1, `${topic}-b`, ["b1"]),
      // A message from a non-member: a business dead letter of partition 2.
      {
        context: context(topic, 2),
        records: [
          record(0, `${topic}-c`, groupCreated(["cy", "dan"])),
          record(1, `${topic}-c`, textMessage("eve", "no")),
        ],
      },
    ];
    const client = await db.pool.connect();
    const results = await applyPartitions(client, parts).finally(() => client.release());
    expect([...results.keys()].sort()).toEqual([0, 1, 2]);
    expect(results.get(0)).toMatchObject({ handled: 3, range: { from: "0", to: "2" } });
    expect(results.get(2)!.deadLettered.business).toBe(1);
    expect(await offsets(topic)).toEqual([
      { partition: 0, next_offset: "3" },
      { partition: 1, next_offset: "2" },
      { partition: 2, next_offset: "2" },
    ]);
    const logged = await db.pool.query(
      `SELECT partition, count(*)::int AS n, count(DISTINCT materialised_at)::int AS tx FROM event_log
        WHERE conversation_id LIKE $1 GROUP BY partition ORDER BY partition`,
      [`${topic}-%`],
    );
    expect(logged.rows).toEqual([
      { partition: 0, n: 3, tx: 1 },
      { partition: 1, n: 2, tx: 1 },
      { partition: 2, n: 1, tx: 1 },
    ]);
    const messages = await db.pool.query(
      `SELECT conversation_id, partition FROM messages WHERE conversation_id LIKE $1 GROUP BY 1, 2 ORDER BY 1`,
      [`${topic}-%`],
    );
    expect(messages.rows).toEqual([
      { conversation_id: `${topic}-a`, partition: 0 },
      { conversation_id: `${topic}-b`, partition: 1 },
    ]);
    const dl = await db.pool.query(`SELECT partition, "offset" FROM dead_letters WHERE topic = $1`, [topic]);
    expect(dl.rows).toEqual([{ partition: 2, offset: "1" }]);
    await new Promise((resolve) => setTimeout(resolve, 100));
    listener.release();
    expect(notes).toEqual(
      expect.arrayContaining([
        { partition: 0, from: "0", to: "2", members: [`${topic}-a`] },
        { partition: 1, from: "0", to: "1", members: [`${topic}-b`] },
        { partition: 2, from: "0", to: "1", members: [`${topic}-c`] },
      ]),
    );
    expect(notes).toHaveLength(3);
  });

  it("writes nothing of a partition another writer moved between the load and the write, and the rest", async () => {
    base = 100;
    const topic = uniqueName("t");
    const parts = [
      conversation(topic, 0, `${topic}-a`, ["a1"]),
      conversation(topic, 1, `${topic}-b`, ["b1", "b2"]),
      conversation(topic, 2, `${topic}-c`, ["c1"]),
    ];
    const client = await db.pool.connect();
    let statements = 0;
    // Another materialiser applies partition 1 after this one loaded it.
    const racing = {
      query: async (config: pg.QueryConfig) => {
        if (++statements === 2) {
          const other = await db.pool.connect();
          await applyBatch(other, parts[1]!.context, parts[1]!.records);
          other.release();
        }
        return client.query(config);
      },
    } as unknown as pg.PoolClient;
    const results = await applyPartitions(racing, parts).finally(() => client.release());
    expect([...results.keys()].sort()).toEqual([0, 2]);
    expect(await offsets(topic)).toEqual([
      { partition: 0, next_offset: "102" },
      { partition: 1, next_offset: "103" },
      { partition: 2, next_offset: "102" },
    ]);
    // Partition 1's rows are the other writer's, once: two messages, one transaction.
    const b = await db.pool.query(
      `SELECT count(*)::int AS n, count(DISTINCT materialised_at)::int AS tx FROM event_log WHERE conversation_id = $1`,
      [`${topic}-b`],
    );
    expect(b.rows).toEqual([{ n: 3, tx: 1 }]);
    expect(await sequenceViolations(db.pool)).toEqual([]);
  });

  it("fails as a whole, writing nothing, when the database refuses one partition's record", async () => {
    base = 200;
    const topic = uniqueName("t");
    const parts = [
      conversation(topic, 0, `${topic}-a`, ["a1"]),
      conversation(topic, 1, `${topic}-b`, ["b1", "REFUSE"]),
    ];
    const client = await db.pool.connect();
    await expect(applyPartitions(client, parts).finally(() => client.release())).rejects.toMatchObject({
      code: "23514",
    });
    expect(await offsets(topic)).toEqual([]);
    const rows = await db.pool.query(
      `SELECT count(*)::int AS n FROM event_log WHERE conversation_id LIKE $1`,
      [`${topic}-%`],
    );
    expect(rows.rows[0].n).toBe(0);
  });
});

describe("the running materialiser sharing transactions", () => {
  it("isolates a refused record of a shared transaction and keeps sharing afterwards", async () => {
    const topic = await createTestTopic("mat_shared", 3);
    const own = await createTestSchema("mat_shared_run");
    await addRefuseRule(own.pool);
    const ev = (conversationId: string, input: ChatEventInput): WorkloadEvent => ({
      conversationId,
      input,
      id: uuidv7(),
      time: new Date(),
    });
    // 30 conversations over 3 partitions, all produced before the materialiser starts:
    // its first fetch holds every partition. One message is refused.
    const ids = Array.from({ length: 30 }, (_, i) => `s${i}`);
    const first = [
      ...ids.map((id) => ev(id, groupCreated(["ana", "bob"]))),
      ...ids.map((id) => ev(id, textMessage("ana", id === "s7" ? "REFUSE" : `${id} one`))),
    ];
    await produceWorkload(topic, first);
    const registry = new Registry();
    const materialiser = await startMaterialiser({
      pool: own.pool,
      topic,
      brokers: kafkaBrokers(),
      groupId: uniqueName("mat-shared"),
      registry,
      statusIntervalMs: 200,
    });
    try {
      await waitUntilApplied(own.pool, topic, 60_000);
      // Sent afterwards, one at a time per conversation: applied, shared again.
      for (let round = 0; round < 3; round++) {
        await produceWorkload(
          topic,
          ids.map((id) => ev(id, textMessage("bob", `${id} r${round}`))),
        );
        await waitUntilApplied(own.pool, topic, 60_000);
      }
    } finally {
      await materialiser.stop();
    }
    const dl = await own.pool.query(`SELECT conversation_id, failure_class, error_code FROM dead_letters`);
    expect(dl.rows).toEqual([{ conversation_id: "s7", failure_class: "data", error_code: "23514" }]);
    const counts = await own.pool.query<{ conversation_id: string; n: number }>(
      `SELECT conversation_id, count(*)::int AS n FROM messages GROUP BY conversation_id`,
    );
    expect(counts.rows).toHaveLength(30);
    for (const row of counts.rows) expect(row.n).toBe(row.conversation_id === "s7" ? 3 : 4);
    // Every event once: event_log holds each applied event of the topic once (creations and messages).
    const logged = await own.pool.query(
      `SELECT count(*)::int AS n, count(DISTINCT event_id)::int AS d FROM event_log`,
    );
    expect(logged.rows[0]).toEqual({ n: 30 + 30 - 1 + 90, d: 30 + 30 - 1 + 90 });
    expect(await sequenceViolations(own.pool)).toEqual([]);
    // Transactions that wrote more than one partition (rows of a transaction share now()).
    const shared = await own.pool.query(
      `SELECT count(*)::int AS n FROM (SELECT materialised_at FROM event_log GROUP BY materialised_at
                                         HAVING count(DISTINCT partition) > 1) s`,
    );
    expect(shared.rows[0].n).toBeGreaterThan(0);
    const value = (name: string, labels: Record<string, string>) => metricSum(registry, name, labels);
    expect(await value("chatbus_breaker_state", { subscription: "materialiser" })).toBe(0);
    expect(await value("chatbus_events_failed_total", { failure_class: "system" })).toBe(0);
    expect(await value("chatbus_events_dead_lettered_total", { failure_class: "data" })).toBe(1);
    await own.cleanup();
  });
});
