/**
 * The log follower against a real PostgreSQL: commits written the way the materialiser
 * writes them (event_log rows, projection_offsets, one NOTIFY per partition in the same
 * transaction), then counted: every event handed over once, each partition in offset
 * order, one read for a commit's partitions, and a failed read retried with what was
 * notified meanwhile.
 */
import {
  createProjectionReader,
  eventsChannel,
  type LoggedEvent,
  type OffsetRange,
} from "@chatbus/consumer-runtime/materialiser";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createTestSchema, type TestSchema } from "../../test/support/isolation.ts";
import { LogFollower } from "../src/realtime/log-follower.ts";
import { eventually } from "./harness.ts";

const topic = "chat.events";
let schema: TestSchema;
let follower: LogFollower;
let handed: LoggedEvent[];
let reads: OffsetRange[][];
let failedReads: number;
const next = new Map<number, number>(); // next offset per partition

/** Commits `count` events in each partition, with one NOTIFY per partition, in one transaction. */
async function commit(partitions: number[], count: number, table = "event_log"): Promise<void> {
  const client = await schema.pool.connect();
  try {
    await client.query("BEGIN");
    for (const partition of partitions) {
      const from = next.get(partition) ?? 0;
      const to = from + count - 1;
      for (let offset = from; offset <= to; offset++) {
        await client.query(
          `INSERT INTO ${table} (partition, "offset", conversation_id, event_id, type, payload, event_time, materialised_at)
           VALUES ($1, $2, $3, $4, 'chat.typing', '{}', now(), now())`,
          [partition, offset, `c-${partition}`, `e-${partition}-${offset}`],
        );
      }
      await client.query(
        `INSERT INTO projection_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)
         ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset`,
        [topic, partition, to + 1],
      );
      await client.query("SELECT pg_notify($1, $2)", [
        eventsChannel(schema.schema),
        JSON.stringify({ partition, from: String(from), to: String(to) }),
      ]);
      next.set(partition, to + 1);
    }
    await client.query("COMMIT");
  } finally {
    client.release();
  }
}

/** Every event handed over exactly once, each partition's in offset order from 0. */
function expectEachOnceInOrder(expected: Map<number, number>): void {
  const byPartition = new Map<number, string[]>();
  for (const e of handed) byPartition.set(e.partition, [...(byPartition.get(e.partition) ?? []), e.offset]);
  for (const [partition, count] of expected) {
    expect(byPartition.get(partition), `partition ${partition}`).toEqual(
      Array.from({ length: count }, (_, i) => String(i)),
    );
  }
  expect(handed).toHaveLength([...expected.values()].reduce((a, b) => a + b, 0));
}

beforeEach(async () => {
  schema = await createTestSchema("follower");
  next.clear();
  handed = [];
  reads = [];
  failedReads = 0;
  const reader = createProjectionReader(schema.pool);
  follower = new LogFollower({
    databaseUrl: schema.url,
    channel: eventsChannel(schema.schema),
    topic,
    pool: schema.pool,
    projection: {
      ...reader,
      eventsInRanges: (ranges) => {
        reads.push([...ranges]);
        return reader.eventsInRanges(ranges);
      },
    },
    logger: pino({ level: "silent" }),
    onEvents: (events) => handed.push(...events),
    observers: [
      {
        connected() {},
        lost() {},
        notified() {},
        applied(events) {
          if (events === null) failedReads++;
        },
      },
    ],
  });
  await follower.start();
});

afterEach(async () => {
  await follower.stop();
  await schema.cleanup();
});

describe("LogFollower", () => {
  it("reads one commit's partitions in one query and hands each event over once, in offset order", async () => {
    await commit([0, 1, 2, 3, 4, 5], 5);
    await eventually("30 events", () => handed.length === 30, 10_000);
    // Not one read per partition (six): the notifications of one commit join one read.
    expect(reads.length).toBeLessThanOrEqual(2);
    await commit([0, 3], 4);
    await eventually("38 events", () => handed.length >= 38, 10_000);
    expectEachOnceInOrder(
      new Map([
        [0, 9],
        [1, 5],
        [2, 5],
        [3, 9],
        [4, 5],
        [5, 5],
      ]),
    );
    expect(follower.cursor).toMatchObject({ 0: "8", 3: "8", 5: "4" });
  });

  it("ignores a hostile notification and keeps delivering every partition", async () => {
    for (const payload of [
      '{"partition":0,"from":"0","to":"99999999999999999999"}',
      '{"partition":"x","from":"0","to":"1"}',
      '{"partition":1,"from":"0","to":""}',
      "not json",
    ]) {
      await schema.pool.query("SELECT pg_notify($1, $2)", [eventsChannel(schema.schema), payload]);
    }
    await commit([0, 1], 2);
    await eventually("4 events", () => handed.length >= 4, 10_000);
    expectEachOnceInOrder(
      new Map([
        [0, 2],
        [1, 2],
      ]),
    );
    expect(failedReads).toBe(0);
  });

  it("retries a failed read with what was notified meanwhile, losing and repeating nothing", async () => {
    await commit([0, 1], 3);
    await eventually("6 events", () => handed.length === 6, 10_000);
    // Reads fail while the table has another name; the commits still land (in it) and notify.
    await schema.pool.query("ALTER TABLE event_log RENAME TO event_log_away");
    await commit([0, 1], 2, "event_log_away");
    await eventually("a failed read", () => failedReads > 0, 10_000);
    await commit([1, 2], 3, "event_log_away");
    await schema.pool.query("ALTER TABLE event_log_away RENAME TO event_log");
    await eventually("16 events", () => handed.length >= 16, 10_000);
    expectEachOnceInOrder(
      new Map([
        [0, 5],
        [1, 8],
        [2, 3],
      ]),
    );
    await commit([2], 1); // and it carries on
    await eventually("17 events", () => handed.length >= 17, 10_000);
    expectEachOnceInOrder(
      new Map([
        [0, 5],
        [1, 8],
        [2, 4],
      ]),
    );
  });
});
