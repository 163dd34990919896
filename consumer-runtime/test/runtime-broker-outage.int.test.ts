/**
 * The broker dies mid-run (SIGKILL) and comes back: the Kafka consumer crashes
 * (kafkajs gives up after its retries), the runtime restarts it and counts the
 * restart, and nothing is lost or reordered. Runs a private broker on port 19192
 * (controller 19193), never the shared one.
 */

import { waitForPartitionLeaders } from "@chatbus/producer-sdk/internal";
import { Registry } from "prom-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { killBroker, restartBroker, startKafka, stopKafka } from "../../scripts/kafka.ts";
import { uniqueName } from "../../test/support/isolation.ts";
import type { Runtime } from "../src/index.ts";
import { useRuntimeFixture } from "./runtime-fixture.ts";
import {
  connectProducer,
  kafkaClient,
  numberOf,
  orderProblems,
  produceNumbered,
  waitFor,
} from "./runtime-support.ts";

const port = 19192;
const brokers = [`127.0.0.1:${port}`];
let runtime: Runtime | undefined;
let startedBroker = false;

beforeAll(async () => {
  startedBroker = (await startKafka(port)).started;
}, 180_000);

afterAll(async () => {
  if (startedBroker) await stopKafka(port);
}, 120_000);

// After the broker's hooks: its afterAll (hooks run as a stack) stops the runtime before the broker goes.
const rt = useRuntimeFixture("rt_outage");

async function restarts(registry: Registry): Promise<number> {
  return (await registry.getSingleMetric("chatbus_consumer_restarts_total")?.get())?.values[0]?.value ?? 0;
}

describe("broker outage", () => {
  it("restarts a crashed consumer and loses nothing", async () => {
    const topic = uniqueName("rt_outage");
    const admin = kafkaClient(brokers).admin();
    await admin.connect();
    await admin.createTopics({
      waitForLeaders: false,
      topics: [{ topic, numPartitions: 4, replicationFactor: 1 }],
    });
    await waitForPartitionLeaders(admin, topic, 4, 30_000);
    await admin.disconnect();
    const conversations = 20;
    const perConversation = 50;
    const producer = await connectProducer(brokers);
    await produceNumbered(producer, topic, conversations, perConversation, "outage");
    await producer.disconnect();

    const registry = new Registry();
    const seen = new Map<string, number[]>();
    const unique = new Set<string>();
    runtime = rt.runtime({
      group: uniqueName("outage"),
      topic,
      brokers,
      registry,
      concurrency: 4,
      kafkaRetries: 2,
      kafkaInitialRetryTimeMs: 100,
      sessionTimeoutMs: 10_000,
      heartbeatIntervalMs: 1000,
    });
    runtime.on("chat.message.sent", async (event) => {
      await new Promise((r) => setTimeout(r, 20));
      const n = numberOf(event);
      seen.set(event.conversationId, [...(seen.get(event.conversationId) ?? []), n]);
      unique.add(`${event.conversationId} ${n}`);
    });
    await runtime.start();
    await waitFor(() => unique.size >= 200, 60_000, "200 events handled before the outage");

    killBroker(port);
    await waitFor(
      async () => (await restarts(registry)) >= 1,
      60_000,
      "the consumer to crash and be restarted",
    );
    await restartBroker(port);
    await waitFor(
      () => unique.size === conversations * perConversation,
      120_000,
      "every event after the outage",
    );

    expect(orderProblems(seen, perConversation, true)).toEqual([]);
    expect(await restarts(registry)).toBeGreaterThanOrEqual(1);
  });
});
