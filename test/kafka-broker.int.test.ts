/**
 * Proves the pinned broker (scripts/kafka.ts) works with kafkajs 2.2.4 for every
 * protocol chatbus uses: admin (CreateTopics, DescribeConfigs, Metadata), idempotent
 * produce with acks=-1, group membership, offset commits and a rebalance.
 */

import { waitForPartitionLeaders } from "@chatbus/producer-sdk/internal";
import { ConfigResourceTypes, type Consumer, Kafka, logLevel } from "kafkajs";
import { afterAll, describe, expect, it } from "vitest";
import { kafkaBrokers } from "./support/env.ts";
import { uniqueName } from "./support/isolation.ts";

const kafka = new Kafka({
  clientId: "chatbus-foundation-test",
  brokers: kafkaBrokers(),
  logLevel: logLevel.NOTHING,
});
const topic = uniqueName("foundation");
const group = uniqueName("foundation-group");
const consumers: Consumer[] = [];

afterAll(async () => {
  await Promise.all(consumers.map((c) => c.disconnect().catch(() => {})));
});

interface Seen {
  key: string;
  seq: number;
  partition: number;
  member: string;
}

/** How many partitions each member got at its latest group join. */
const joins = new Map<string, { partitions: number }>();

function startMember(name: string, seen: Seen[]): Promise<Consumer> {
  const consumer = kafka.consumer({ groupId: group, sessionTimeout: 10_000, heartbeatInterval: 1000 });
  consumers.push(consumer);
  consumer.on(consumer.events.GROUP_JOIN, ({ payload }) => {
    const partitions = Object.values(payload.memberAssignment).reduce((n, p) => n + p.length, 0);
    joins.set(name, { partitions });
  });
  return consumer
    .connect()
    .then(() => consumer.subscribe({ topic, fromBeginning: true }))
    .then(() =>
      consumer.run({
        autoCommit: false,
        eachMessage: async ({ partition, message }) => {
          const body = JSON.parse(message.value!.toString()) as { seq: number };
          seen.push({ key: message.key!.toString(), seq: body.seq, partition, member: name });
          await consumer.commitOffsets([
            { topic, partition, offset: (BigInt(message.offset) + 1n).toString() },
          ]);
        },
      }),
    )
    .then(() => consumer);
}

async function waitFor(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("pinned Kafka broker with kafkajs", () => {
  it("creates a 12-partition topic and reads its config back", async () => {
    const admin = kafka.admin();
    await admin.connect();
    try {
      expect(
        await admin.createTopics({
          waitForLeaders: false,
          topics: [{ topic, numPartitions: 12, replicationFactor: 1 }],
        }),
      ).toBe(true);
      // Throws unless all 12 partitions get a leader (kafkajs's waitForLeaders gives up
      // on UNKNOWN_TOPIC_OR_PARTITION while a busy broker propagates a new topic).
      await waitForPartitionLeaders(admin, topic, 12, 30_000);
      const configs = await admin.describeConfigs({
        includeSynonyms: false,
        resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ["cleanup.policy"] }],
      });
      expect(configs.resources[0]!.configEntries[0]!.configValue).toBe("delete");
    } finally {
      await admin.disconnect();
    }
  });

  it("keeps keyed order across a two-member group and a rebalance, losing nothing", async () => {
    const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    await producer.connect();
    const keys = Array.from({ length: 40 }, (_, i) => `conv-${i}`);
    const send = (from: number, to: number) =>
      producer.send({
        topic,
        acks: -1,
        messages: keys.flatMap((key) =>
          Array.from({ length: to - from }, (_, i) => ({ key, value: JSON.stringify({ seq: from + i }) })),
        ),
      });
    const seen: Seen[] = [];
    const first = await startMember("a", seen);
    await startMember("b", seen);
    // Produce only once both members hold partitions, so that both receive work.
    await waitFor(
      () =>
        (joins.get("a")?.partitions ?? 0) + (joins.get("b")?.partitions ?? 0) === 12 &&
        joins.get("b")!.partitions > 0 &&
        joins.get("a")!.partitions > 0,
      60_000,
      "both members to hold partitions",
    );
    await send(0, 10);
    await waitFor(() => seen.length >= keys.length * 10, 60_000, "the first 400 records");
    // Both members received work: the group really spread the 12 partitions.
    expect(new Set(seen.map((s) => s.member))).toEqual(new Set(["a", "b"]));

    // Member a leaves; its partitions move to b, which resumes from the committed offsets.
    await first.disconnect();
    await send(10, 20);
    await producer.disconnect();
    await waitFor(
      () => new Set(seen.map((s) => `${s.key}:${s.seq}`)).size >= keys.length * 20,
      60_000,
      "all 800 records",
    );

    for (const key of keys) {
      const events = seen.filter((s) => s.key === key);
      expect(new Set(events.map((s) => s.partition)).size).toBe(1);
      const seqs = [...new Set(events.map((s) => s.seq))];
      expect(seqs).toEqual(Array.from({ length: 20 }, (_, i) => i));
      // Per-key order: the sequence never goes backwards except on a redelivery
      // that starts again from a committed offset.
      const order = events.map((s) => s.seq);
      expect(order.slice(-10)).toEqual(Array.from({ length: 10 }, (_, i) => 10 + i));
    }
    // Nothing after the rebalance went to the member that left.
    expect(seen.filter((s) => s.seq >= 10).every((s) => s.member === "b")).toBe(true);
  });
});
